//! The directory synced from a real FHIR R4 server: medplum's FHIR router
//! with its in-memory repository (`tests/peers/fhir-server`, installed from
//! the npm registry by `scripts/setup.sh --peers`), on loopback, through
//! the real `mhero` binary (`mhero sync`, `mhero contacts`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mhero_broker::directory::generate::{ROLES, Registry, as_batch};
use serde_json::{Value, json};

use super::mhero;

/// A running FHIR server; stopped when dropped.
struct FhirPeer {
    child: Child,
    base: String,
    /// The `Authorization` header the server demands, if any.
    authorization: Option<String>,
}

impl Drop for FhirPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/fhir-server")
}

/// Starts the server, or says why it cannot and skips (a failure under
/// `CI=true` or `MHERO_PEERS=1`).
fn fhir_peer(args: &[&str]) -> Option<FhirPeer> {
    fhir_peer_with(args, Stdio::inherit())
}

fn fhir_peer_with(args: &[&str], stderr: Stdio) -> Option<FhirPeer> {
    let installed = peer_dir()
        .join("node_modules/@medplum/fhir-router")
        .is_dir();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !mhero_tests::peer_present((!(installed && node)).then(|| {
        "the FHIR test server is not installed (run `scripts/setup.sh --peers`)".to_string()
    })) {
        return None;
    }
    let mut child = Command::new("node")
        .arg(peer_dir().join("server.mjs"))
        .arg("0")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read the server's first line");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line from the FHIR server: {line:?}"));
    let authorization = args.windows(2).find_map(|w| match w[0] {
        "--bearer" => Some(format!("Bearer {}", w[1])),
        "--basic" => Some(format!("Basic {}", base64_encode(w[1].as_bytes()))),
        _ => None,
    });
    Some(FhirPeer {
        child,
        base: format!("http://127.0.0.1:{port}/fhir"),
        authorization,
    })
}

/// Standard base64 (for a basic-auth header).
fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

impl FhirPeer {
    /// Loads a collection Bundle as a batch of PUTs; every entry must land.
    fn load(&self, bundle: &Value) {
        let batch = as_batch(bundle);
        let mut req = client()
            .post(&self.base)
            .header("content-type", "application/fhir+json")
            .body(batch.to_string());
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let body: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
        for (i, e) in body["entry"].as_array().unwrap().iter().enumerate() {
            let status = e["response"]["status"].as_str().unwrap_or("");
            assert!(status.starts_with("20"), "entry {i}: {e}");
        }
    }

    fn load_registry(&self, reg: &Registry) {
        self.load(&reg.places_bundle());
        for p in 0..reg.pages() {
            self.load(&reg.practitioners_page(p));
        }
        self.load(&reg.groups_bundle());
    }

    fn put(&self, resource: &Value) {
        let url = format!(
            "{}/{}/{}",
            self.base,
            resource["resourceType"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        let mut r = resource.clone();
        r.as_object_mut().unwrap().remove("meta");
        let resp = client()
            .put(url)
            .header("content-type", "application/fhir+json")
            .body(r.to_string())
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    fn delete(&self, reference: &str) {
        let resp = client()
            .delete(format!("{}/{reference}", self.base))
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
}

fn config(dir: &Path, base: &str, extra: &str) -> PathBuf {
    let path = dir.join("mhero.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[directory.sources.ihris]\nbase_url = {base:?}\nevery_s = 0\npage_size = 50\n{extra}",
            dir.join("data")
        ),
    )
    .unwrap();
    path
}

/// `mhero --config <config> <args…>`, which must succeed and print JSON.
fn mhero_json(config: &Path, args: &[&str]) -> Value {
    let out = mhero()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mhero {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Syncs every source; the report of the first.
fn sync(config: &Path) -> Value {
    mhero_json(config, &["sync", "--json"])[0].clone()
}

fn count(config: &Path, selector: &str) -> u64 {
    mhero_json(config, &["contacts", "count", selector, "--json"])["selected"]
        .as_u64()
        .unwrap()
}

fn summary(config: &Path) -> Value {
    mhero_json(config, &["contacts", "summary"])
}

fn registry() -> Registry {
    Registry {
        noise_percent: 6.0,
        retired_percent: 3.0,
        page: 200,
        ..Registry::new(600)
    }
}

/// Active nurses in Bong county, by the generator's own rules.
fn nurses_in_bong(reg: &Registry, gone: &[u32]) -> u64 {
    (0..reg.practitioners)
        .filter(|i| !gone.contains(i))
        .filter(|i| {
            let (p, _) = reg.practitioner(*i);
            p["active"] == true
                && reg.role_of(*i) == 0
                && reg
                    .district_of(reg.facility_of(*i))
                    .starts_with("Location/D-bong-")
        })
        .count() as u64
}

#[test]
fn a_directory_syncs_from_a_real_fhir_server_with_updates_and_deletions() {
    let Some(peer) = fhir_peer(&[]) else { return };
    let reg = registry();
    peer.load_registry(&reg);
    let tmp = tempfile::tempdir().unwrap();
    // Incremental after the first pass; a full reconcile only when asked.
    let cfg = config(tmp.path(), &peer.base, "reconcile_every_s = 1000000\n");

    let first = sync(&cfg);
    assert_eq!(first["full"], true);
    assert_eq!(first["import"]["created"], 600, "{first}");
    let problems = first["import"]["problems"].as_array().unwrap();
    assert!(
        !problems.is_empty()
            && problems.iter().all(|p| p["message"]
                .as_str()
                .unwrap()
                .contains("not a phone number")
                || p["message"]
                    .as_str()
                    .unwrap()
                    .contains("not a valid phone number")),
        "{problems:?}"
    );
    assert!(!first["import"]["duplicates"].as_array().unwrap().is_empty());
    let want = nurses_in_bong(&reg, &[]);
    assert!(want > 0);
    assert_eq!(count(&cfg, "role:nurse AND location:C-bong"), want);
    assert_eq!(
        count(&cfg, "group:\"Ebola responders\" AND role:nurse"),
        (0..600)
            .step_by(20)
            .filter(|i| reg.practitioner(*i).0["active"] == true && reg.role_of(*i) == 0)
            .count() as u64
    );

    // Nothing changed: an incremental pass reads nothing new.
    let again = sync(&cfg);
    assert_eq!(again["full"], false);
    assert_eq!(again["import"]["created"], 0);
    assert_eq!(again["import"]["updated"], 0);

    // Between syncs: two workers leave, one is retired, one moves to Bong
    // as a nurse, one joins.
    let gone = [3u32, 4];
    for i in gone {
        peer.delete(&format!("Practitioner/P-{i}"));
        peer.delete(&format!("PractitionerRole/R-{i}"));
    }
    let (mut retired, _) = reg.practitioner(10);
    retired["active"] = json!(false);
    peer.put(&retired);
    let joined = Registry::new(601).practitioner(600);
    peer.put(&joined.0);
    peer.put(&joined.1);

    let inc = sync(&cfg);
    assert_eq!(inc["full"], false);
    assert_eq!(inc["import"]["created"], 1, "{inc}");
    assert!(inc["import"]["updated"].as_u64().unwrap() >= 1, "{inc}");
    // This server has no type history: deletions wait for a reconcile.
    assert_eq!(inc["history"], false);
    assert_eq!(inc["import"]["removed"], 0);
    assert_eq!(summary(&cfg)["contacts"], 601);

    let cfg = config(tmp.path(), &peer.base, "reconcile_every_s = 0\n");
    let full = sync(&cfg);
    assert_eq!(full["full"], true);
    assert_eq!(full["import"]["removed"], 2, "{full}");
    assert_eq!(summary(&cfg)["contacts"], 599);
    let mut excluded = gone.to_vec();
    excluded.push(10);
    let joined_counts = u64::from(
        Registry::new(601).role_of(600) == 0
            && Registry::new(601)
                .district_of(Registry::new(601).facility_of(600))
                .starts_with("Location/D-bong-"),
    );
    assert_eq!(
        count(&cfg, "role:nurse AND location:C-bong"),
        nurses_in_bong(&reg, &excluded) + joined_counts
    );
    let out = mhero()
        .arg("--config")
        .arg(&cfg)
        .args(["contacts", "show", "ihris:Practitioner/P-3"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a deleted worker is gone");
    let out = mhero()
        .arg("--config")
        .arg(&cfg)
        .args(["contacts", "show", "Practitioner/P-21"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Liberia (Location/LR)"),
        "the whole ancestry: {text}"
    );
    assert!(text.contains(ROLES[reg.role_of(21)].0), "{text}");
}

#[test]
fn server_errors_are_retried_and_the_sync_completes() {
    let Some(peer) = fhir_peer(&["--fail-every", "3"]) else {
        return;
    };
    let reg = registry();
    peer.load_registry(&reg);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &peer.base, "");
    let r = sync(&cfg);
    assert!(r["requests_retried"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["import"]["created"], 600);
}

#[test]
fn a_sync_killed_midway_resumes_without_duplicates_or_gaps() {
    let Some(mut peer) = fhir_peer_with(&["--delay-ms", "50", "--log-requests"], Stdio::piped())
    else {
        return;
    };
    let requests = BufReader::new(peer.child.stderr.take().unwrap());
    let reg = registry();
    peer.load_registry(&reg);
    let tmp = tempfile::tempdir().unwrap();
    // 20 practitioners a page: 30 pages of workers.
    let cfg = config(tmp.path(), &peer.base, "");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("page_size = 50", "page_size = 20"),
    )
    .unwrap();
    let mut child = mhero()
        .arg("--config")
        .arg(&cfg)
        .args(["sync", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has asked for the tenth page of practitioners. (The
    // server's log is read to its end, so the server never blocks on it.)
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in requests.lines().map_while(Result::ok) {
            if line.starts_with("GET /fhir/Practitioner?") {
                let _ = tx.send(());
            }
        }
    });
    for page in 1..=10 {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no request for practitioner page {page}"));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the sync ended before it was killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let r = sync(&cfg);
    assert_eq!(r["resumed"], true, "{r}");
    let created = r["import"]["created"].as_u64().unwrap();
    assert!(
        created > 0 && created < 600,
        "some were imported before the kill, the rest after: {r}"
    );
    let s = summary(&cfg);
    assert_eq!(s["contacts"], 600, "no duplicates, no gaps: {s}");
    assert_eq!(
        count(&cfg, "role:nurse AND location:C-bong"),
        nurses_in_bong(&reg, &[])
    );
}

/// Clients from OpenMRS (its FHIR2 module serves Patients) beside workers
/// from iHRIS, both on the same server here: a client with a worker's
/// number joins that worker's contact; the others are new contacts.
#[test]
fn openmrs_patients_sync_as_clients_and_merge_with_workers_by_number() {
    let Some(peer) = fhir_peer(&[]) else { return };
    let reg = Registry::new(40);
    peer.load_registry(&reg);
    let patients: Vec<Value> = (0..5)
        .map(|i| {
            json!({
                "resourceType": "Patient", "id": format!("pt-{i}"), "active": true,
                "name": [{"family": "Client", "given": [format!("Number{i}")]}],
                // Patient 0 has worker 0's number.
                "telecom": [{"system": "phone", "value": if i == 0 { "0770000000".to_string() } else { format!("0886{:06}", i) }}],
                "managingOrganization": {"reference": "Organization/MOH"}
            })
        })
        .collect();
    peer.load(&json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": patients.iter().map(|p| json!({"resource": p})).collect::<Vec<_>>()
    }));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &peer.base,
        &format!(
            "[directory.sources.openmrs]\nbase_url = {:?}\nresource_types = [\"Patient\"]\nrevinclude = {{}}\nmapper = \"openmrs-patient\"\nevery_s = 0\n",
            peer.base
        ),
    );
    let reports = mhero_json(&cfg, &["sync", "--json"]);
    let sources: Vec<&str> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["ihris", "openmrs"]);
    assert_eq!(reports[1]["import"]["created"], 4, "{reports}");
    assert_eq!(reports[1]["import"]["merged"], 1, "{reports}");
    assert_eq!(count(&cfg, "role:client"), 5);
    assert_eq!(
        count(
            &cfg,
            "role:client AND role:nurse OR role:client AND NOT role:nurse"
        ),
        5
    );
    assert_eq!(
        summary(&cfg)["contacts"],
        44,
        "40 workers + 4 clients; one client is a worker"
    );
    let out = mhero()
        .arg("--config")
        .arg(&cfg)
        .args(["contacts", "show", "+231770000000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ihris Practitioner/P-0") && text.contains("openmrs Patient/pt-0"),
        "{text}"
    );
}

/// A broker that runs syncs its sources itself: at start, then every
/// `every_s`.
#[test]
fn a_running_broker_syncs_its_sources_on_schedule() {
    let Some(peer) = fhir_peer(&[]) else { return };
    let reg = Registry::new(100);
    peer.load_registry(&reg);
    let tmp = tempfile::tempdir().unwrap();
    let mut config = mhero_broker::Config {
        data_dir: tmp.path().join("data"),
        ..mhero_broker::Config::default()
    };
    config.directory.sources.insert(
        "ihris".into(),
        mhero_broker::directory::SourceConfig {
            every_s: 1,
            ..mhero_broker::directory::SourceConfig::new(&peer.base)
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let contacts = |broker: &mhero_broker::Broker, want: u64| {
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while broker.directory().summary().contacts != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?}",
                    broker.directory().summary()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let broker = rt.block_on(mhero_broker::Broker::open(config)).unwrap();
    contacts(&broker, 100);
    let (p, r) = Registry::new(101).practitioner(100);
    peer.put(&p);
    peer.put(&r);
    contacts(&broker, 101);
    rt.block_on(broker.shutdown());
}

/// A server that demands credentials gets them from the source's `auth`;
/// without them the sync fails, saying so, and imports nothing.
#[test]
fn bearer_and_basic_credentials_reach_the_server() {
    for (flag, secret, auth) in [
        (
            "--bearer",
            "s3cret-token",
            "auth = { bearer = \"s3cret-token\" }\n",
        ),
        (
            "--basic",
            "mhero:pa55",
            "auth = { basic = { user = \"mhero\", password = \"pa55\" } }\n",
        ),
    ] {
        let Some(peer) = fhir_peer(&[flag, secret]) else {
            return;
        };
        peer.load_registry(&Registry::new(30));
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path(), &peer.base, "");
        let out = mhero()
            .arg("--config")
            .arg(&cfg)
            .args(["sync", "--json"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("401") && err.contains("credentials"), "{err}");
        assert!(!err.contains(secret), "{err}");
        let cfg = config(tmp.path(), &peer.base, auth);
        assert_eq!(sync(&cfg)["import"]["created"], 30, "{flag}");
    }
}

/// Data validation against the real FHIR server: workers synced from it
/// confirm or correct their facility and phone by SMS; the report counts
/// them; a correction is written back with `If-Match`, and one whose
/// Practitioner changed at the server since the sync, or whose
/// PractitionerRole the registry moved elsewhere since, is a conflict,
/// reported and not overwritten; one the registry already took is
/// skipped, not written again. A preview says so before anything is
/// written.
#[test]
fn data_validation_writes_corrections_back_with_if_match_and_reports_conflicts() {
    use super::server::{JsonBody, Server, json_of, make_token, sandbox_replies, with};
    use reqwest::StatusCode;

    let Some(peer) = fhir_peer(&[]) else { return };
    let place = |id: &str, name: &str, parent: Option<&str>, kind: &str| {
        let mut l = json!({"resourceType": "Location", "id": id, "name": name, "status": "active",
            "type": [{"coding": [{"code": kind}]}]});
        if let Some(p) = parent {
            l["partOf"] = json!({"reference": format!("Location/{p}")});
        }
        l
    };
    let mut entry = vec![
        place("VD1", "Validation district", None, "district"),
        place("VF1", "Facility One", Some("VD1"), "facility"),
        place("VF2", "Facility Two", Some("VD1"), "facility"),
        place("VF3", "Facility Three", Some("VD1"), "facility"),
    ];
    for (id, phone) in [
        ("VA", Some("+231770000701")),
        ("VB", Some("+231770000702")),
        ("VC", Some("+231770000703")),
        ("VD", Some("+231770000704")),
        ("VG", Some("+231770000706")),
        ("VH", Some("+231770000707")),
        ("VE", None),
    ] {
        let telecom: Vec<Value> = phone
            .map(|p| json!({"system": "phone", "value": p, "use": "mobile"}))
            .into_iter()
            .collect();
        entry.push(
            json!({"resourceType": "Practitioner", "id": id, "active": true,
            "name": [{"text": format!("Worker {id}")}], "telecom": telecom}),
        );
        entry.push(
            json!({"resourceType": "PractitionerRole", "id": format!("{id}-role"), "active": true,
            "practitioner": {"reference": format!("Practitioner/{id}")},
            "location": [{"reference": "Location/VF1"}],
            "code": [{"coding": [{"code": "chw"}]}]}),
        );
    }
    let entry: Vec<Value> = entry
        .into_iter()
        .map(|r| json!({ "resource": r }))
        .collect();
    peer.load(&json!({"resourceType": "Bundle", "type": "collection", "entry": entry}));

    let tmp = tempfile::tempdir().unwrap();
    let config = config(
        tmp.path(),
        &peer.base,
        "\n[channels.sms]\nconnector = \"sandbox\"\n",
    );
    assert_eq!(sync(&config)["import"]["created"], 7);
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let http = reqwest::blocking::Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&http, &server, &admin, "sender");
    let get = |path: &str| {
        let (status, v) = json_of(with(http.get(server.url(path)), &sender).send().unwrap());
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        v
    };
    let (status, created) = json_of(
        with(http.post(server.url("/v1/validations")), &sender)
            .json_body(&json!({"selector": "role:chw", "question_timeout_s": 4}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (created["asked"].as_u64(), created["no_address"].as_u64()),
        (Some(6), Some(1))
    );
    let survey = format!("/v1/surveys/{}", created["survey"].as_str().unwrap());
    let v = format!("/v1/validations/{}", created["id"].as_str().unwrap());
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let answered = |q: usize, n: u64| get(&survey)["questions"][q]["answered"] == n;
    // A confirms both; B and G moved to Facility Two; C and H have new
    // numbers; D never answers.
    sandbox_replies(
        &http,
        &server,
        "sms",
        &[
            ("a1", "+231770000701", "yes"),
            ("b1", "+231770000702", "no"),
            ("c1", "+231770000703", "yes"),
            ("g1", "+231770000706", "no"),
            ("h1", "+231770000707", "yes"),
        ],
    );
    wait("the first answers", &|| answered(0, 5));
    sandbox_replies(
        &http,
        &server,
        "sms",
        &[
            ("a2", "+231770000701", "1"),
            ("b2", "+231770000702", "Facility Two"),
            ("c2", "+231770000703", "no"),
            ("g2", "+231770000706", "Facility Two"),
            ("h2", "+231770000707", "no"),
        ],
    );
    wait("the second answers", &|| answered(2, 3) && answered(1, 2));
    sandbox_replies(
        &http,
        &server,
        "sms",
        &[
            ("b3", "+231770000702", "yes"),
            ("c3", "+231770000703", "0886 123 456"),
            ("g3", "+231770000706", "yes"),
            ("h3", "+231770000707", "+231 886 123 457"),
        ],
    );
    wait("every session ended", &|| {
        get(&v)["totals"]["in_progress"] == 0
    });
    let report = get(&v);
    let totals = &report["totals"];
    assert_eq!(
        (
            totals["confirmed"].as_u64(),
            totals["corrected"].as_u64(),
            totals["no_answer"].as_u64(),
            totals["unreachable"].as_u64()
        ),
        (Some(1), Some(4), Some(1), Some(1)),
        "{report}"
    );
    // The first item of the array `v` that `f` takes, or a panic naming `v`.
    let item = |v: &Value, f: &dyn Fn(&Value) -> bool| -> Value {
        v.as_array()
            .and_then(|a| a.iter().find(|x| f(x)))
            .cloned()
            .unwrap_or_else(|| panic!("none as expected in {v}"))
    };
    let district = item(&report["by_district"], &|d| d["place"] == "Location/VD1");
    assert_eq!(district["counts"]["corrected"], 4);
    let corrections = report["corrections"].as_array().unwrap();
    assert_eq!(corrections[0]["source"], "Practitioner/VB");
    assert_eq!(corrections[0]["facility"]["value"], "Location/VF2");
    assert_eq!(corrections[1]["phone"]["value"], "+231886123456");
    assert_eq!(corrections[2]["source"], "Practitioner/VG");
    assert_eq!(corrections[2]["facility"]["value"], "Location/VF2");
    assert_eq!(corrections[3]["phone"]["value"], "+231886123457");

    let fetch = |path: &str| -> Value {
        serde_json::from_slice(
            &client()
                .get(format!("{}/{path}", peer.base))
                .send()
                .unwrap()
                .bytes()
                .unwrap(),
        )
        .unwrap()
    };
    // Meanwhile C's record changes at the registry.
    let mut c = fetch("Practitioner/VC");
    c["name"] = json!([{"text": "Worker VC (renamed at the registry)"}]);
    peer.put(&c);
    // And the registry moves G to Facility Three.
    peer.put(
        &json!({"resourceType": "PractitionerRole", "id": "VG-role", "active": true,
        "practitioner": {"reference": "Practitioner/VG"},
        "location": [{"reference": "Location/VF3"}],
        "code": [{"coding": [{"code": "chw"}]}]}),
    );

    // And the registry takes H's new number itself (a new version).
    let mut h = fetch("Practitioner/VH");
    h["telecom"] = json!([{"system": "phone", "value": "+231886123457", "use": "mobile"}]);
    peer.put(&h);
    let h_version = fetch("Practitioner/VH")["meta"]["versionId"].clone();

    // The export: only B's change, checked against the server's version.
    let bundle = get(&format!("{v}/bundle"));
    assert_eq!(bundle["type"], "transaction");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{bundle}");
    assert_eq!(entries[0]["request"]["url"], "PractitionerRole/VB-role");
    assert!(
        entries[0]["request"]["ifMatch"]
            .as_str()
            .unwrap()
            .starts_with("W/\"")
    );

    // The preview says what a write-back would do, writing nothing.
    let preview = get(&format!("{v}/write-back"));
    assert_eq!(
        preview["totals"],
        json!({"planned": 1, "conflict": 2, "skipped": 1}),
        "{preview}"
    );
    let b = item(&preview["results"], &|r| r["result"] == "planned");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .starts_with("PUT PractitionerRole/VB-role (If-Match W/\""),
        "{b}"
    );
    assert_eq!(
        fetch("PractitionerRole/VB-role")["location"][0]["reference"],
        "Location/VF1",
        "a preview writes nothing"
    );

    // A sender may not write back; an admin does.
    let (status, _) = json_of(
        with(http.post(server.url(&format!("{v}/write-back"))), &sender)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, written) = json_of(
        with(http.post(server.url(&format!("{v}/write-back"))), &admin)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(
        written["totals"],
        json!({"written": 1, "conflict": 2, "skipped": 1}),
        "{written}"
    );
    let h_result = item(&written["results"], &|r| r["result"] == "skipped");
    assert_eq!(h_result["detail"], "already so at the source", "{h_result}");
    let moved = item(&written["results"], &|r| {
        r["result"] == "conflict" && r["detail"].as_str().unwrap().contains("VG-role")
    });
    assert!(
        moved["detail"].as_str().unwrap().contains("Location/VF3"),
        "{moved}"
    );
    assert_eq!(
        fetch("PractitionerRole/VB-role")["location"][0]["reference"],
        "Location/VF2",
        "B's facility is corrected at the registry"
    );
    let c = fetch("Practitioner/VC");
    assert_eq!(c["telecom"][0]["value"], "+231770000703", "not overwritten");
    assert_eq!(c["name"][0]["text"], "Worker VC (renamed at the registry)");
    assert_eq!(
        fetch("PractitionerRole/VG-role")["location"][0]["reference"],
        "Location/VF3",
        "the registry's move is not overwritten"
    );
    assert_eq!(
        fetch("Practitioner/VH")["meta"]["versionId"],
        h_version,
        "H's number, already at the registry, is not written again"
    );

    // Again: B is not written twice; C and G are still conflicts.
    let (_, again) = json_of(
        with(http.post(server.url(&format!("{v}/write-back"))), &admin)
            .send()
            .unwrap(),
    );
    assert_eq!(
        again["totals"],
        json!({"conflict": 2, "skipped": 1}),
        "{again}"
    );
    assert_eq!(
        get(&format!("{v}/write-back"))["totals"],
        json!({"conflict": 2, "skipped": 1}),
        "B, written, is left out of the preview"
    );
    assert_eq!(
        get(&v)["write_back"],
        json!({"conflict": 2, "skipped": 1, "written": 1})
    );
    assert!(server.stop().success());
}
