//! Kannel on loopback, from Debian's `kannel` and `kannel-extras`: a
//! bearerbox with the `fake` SMSC, the `fakesmsc` test program standing in
//! for the operator's SMSC (it acknowledges every message, produces the
//! delivery reports Kannel asks for, and injects inbound SMS), and an
//! smsbox whose sendsms interface the broker's `kannel` connector calls.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where Debian puts `fakesmsc` (it is a test program, not on `PATH`).
const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";

/// The programs, or why they are not here.
pub fn missing() -> Option<String> {
    for program in ["bearerbox", "smsbox"] {
        if crate::program(program).is_none() && !Path::new("/usr/sbin").join(program).is_file() {
            return Some(format!(
                "Kannel's {program} is not installed (run `scripts/setup.sh --peers`: Debian's kannel)"
            ));
        }
    }
    if fakesmsc().is_none() {
        return Some(
            "Kannel's fakesmsc is not installed (run `scripts/setup.sh --peers`: Debian's kannel-extras)"
                .into(),
        );
    }
    None
}

fn sbin(program: &str) -> PathBuf {
    crate::program(program).unwrap_or_else(|| Path::new("/usr/sbin").join(program))
}

fn fakesmsc() -> Option<PathBuf> {
    crate::program("fakesmsc").or_else(|| Some(PathBuf::from(FAKESMSC)).filter(|p| p.is_file()))
}

/// Inbound SMS the fake SMSC injects once it is connected.
pub struct Mo {
    pub from: String,
    pub to: String,
    pub text: String,
    /// How many times (each is a distinct message with its own id).
    pub count: u32,
}

pub struct Options {
    /// The broker's `/webhooks/<channel>` URL: inbound SMS are posted to it.
    pub webhook_url: String,
    pub webhook_token: String,
    pub username: String,
    pub password: String,
    pub mo: Option<Mo>,
    /// smsbox's sendsms port (the broker's config names it before Kannel
    /// starts): [`crate::free_port`].
    pub sendsms_port: u16,
}

/// A running Kannel; stopped on drop.
pub struct Kannel {
    children: Vec<Child>,
    dir: PathBuf,
    admin: String,
    /// smsbox's sendsms interface: the connector's `base_url`.
    pub base_url: String,
}

impl Kannel {
    /// Starts bearerbox, the fake SMSC and smsbox with their files in
    /// `dir`, and waits until the SMSC is online and sendsms answers.
    pub fn start(dir: &Path, options: &Options) -> Result<Kannel> {
        std::fs::create_dir_all(dir)?;
        let [admin, smsbox, smsc] = std::array::from_fn(|_| crate::free_port());
        let sendsms = options.sendsms_port;
        let mo_url = format!(
            "{}{}token={}&type=mo&from=%p&to=%P&text=%a&ts=%T&id=%I",
            options.webhook_url,
            if options.webhook_url.contains('?') {
                '&'
            } else {
                '?'
            },
            options.webhook_token
        );
        let conf = format!(
            r#"group = core
admin-port = {admin}
admin-password = "admin"
smsbox-port = {smsbox}
box-allow-ip = "127.0.0.1"
log-level = 1
log-file = "{dir}/bearerbox.log"
access-log = "{dir}/access.log"
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = fake
host = 127.0.0.1
port = {smsc}
connect-allow-ip = "127.0.0.1"

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {smsbox}
sendsms-port = {sendsms}
mo-recode = true
log-level = 1
log-file = "{dir}/smsbox.log"

group = sendsms-user
username = "{user}"
password = "{password}"
concatenation = true
max-messages = 10

group = sms-service
keyword = default
catch-all = true
max-messages = 0
get-url = "{mo_url}"
"#,
            dir = dir.display(),
            user = options.username,
            password = options.password,
        );
        let conf_path = dir.join("kannel.conf");
        std::fs::write(&conf_path, conf)?;
        let mut kannel = Kannel {
            children: Vec::new(),
            dir: dir.to_path_buf(),
            admin: format!("127.0.0.1:{admin}"),
            base_url: format!("http://127.0.0.1:{sendsms}"),
        };
        let log =
            |name: &str| -> Result<std::fs::File> { Ok(std::fs::File::create(dir.join(name))?) };
        kannel.children.push(
            Command::new(sbin("bearerbox"))
                .arg(&conf_path)
                .stdout(log("bearerbox.out")?)
                .stderr(log("bearerbox.err")?)
                .spawn()
                .context("start bearerbox")?,
        );
        kannel.wait_for(Duration::from_secs(20), "bearerbox's admin port", |k| {
            k.status().is_ok()
        })?;
        let mut fake = Command::new(fakesmsc().context("fakesmsc")?);
        fake.args(["-H", "127.0.0.1", "-r", &smsc.to_string(), "-i", "0.1"]);
        match &options.mo {
            Some(mo) => fake
                .args(["-m", &mo.count.to_string()])
                .arg(format!("{} {} text {}", mo.from, mo.to, mo.text)),
            // Nothing to inject: it only takes messages.
            None => fake.args(["-m", "0", "0 0 text none"]),
        };
        kannel.children.push(
            fake.stdout(log("fakesmsc.out")?)
                .stderr(log("fakesmsc.err")?)
                .spawn()
                .context("start fakesmsc")?,
        );
        kannel.wait_for(Duration::from_secs(20), "the fake SMSC online", |k| {
            k.status().is_ok_and(|s| s.contains("online"))
        })?;
        kannel.children.push(
            Command::new(sbin("smsbox"))
                .arg(&conf_path)
                .stdout(log("smsbox.out")?)
                .stderr(log("smsbox.err")?)
                .spawn()
                .context("start smsbox")?,
        );
        let sendsms_addr = format!("127.0.0.1:{sendsms}");
        kannel.wait_for(Duration::from_secs(20), "smsbox's sendsms port", |_| {
            std::net::TcpStream::connect(&sendsms_addr).is_ok()
        })?;
        Ok(kannel)
    }

    fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        mut ready: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        while !ready(self) {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "a Kannel process ended ({status}) waiting for {what}: {}",
                        self.logs()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("no {what} after {within:?}: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// bearerbox's `status.txt`.
    pub fn status(&self) -> Result<String> {
        let mut stream = std::net::TcpStream::connect(&self.admin)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /status.txt?password=admin HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.admin
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// The tails of Kannel's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in [
            "bearerbox.log",
            "bearerbox.err",
            "smsbox.log",
            "smsbox.err",
            "fakesmsc.err",
        ] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            out.push_str(&format!("\n--- {name}:\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::File::open(self.dir.join(file))
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default()
    }

    /// Messages the fake SMSC received (the phones' side): `(to, text)`.
    pub fn received(&self) -> Vec<(String, String)> {
        // fakesmsc prints `Got message N: <from to text …>`.
        self.lines("fakesmsc.out")
            .into_iter()
            .chain(self.lines("fakesmsc.err"))
            .filter_map(|line| {
                let (_, rest) = line.split_once("Got message ")?;
                let body = rest.split_once(": <")?.1.strip_suffix('>')?;
                let mut parts = body.splitn(4, ' ');
                let (_from, to, _kind) = (parts.next()?, parts.next()?, parts.next()?);
                Some((to.to_string(), parts.next().unwrap_or_default().to_string()))
            })
            .collect()
    }

    /// How many messages bearerbox sent to the SMSC in each second of its
    /// access log (`YYYY-MM-DD HH:MM:SS Sent SMS …`).
    pub fn sent_per_second(&self) -> BTreeMap<String, u32> {
        let mut seconds = BTreeMap::new();
        for line in self.lines("access.log") {
            if line.get(20..28) == Some("Sent SMS") {
                *seconds.entry(line[..19].to_string()).or_insert(0) += 1;
            }
        }
        seconds
    }

    /// sendsms requests smsbox took in each second of its log: when the
    /// broker's requests arrived.
    pub fn requests_per_second(&self) -> BTreeMap<String, u32> {
        let mut seconds = BTreeMap::new();
        for line in self.lines("smsbox.log") {
            if line.contains("INFO: sendsms sender:") {
                *seconds.entry(line[..19].to_string()).or_insert(0) += 1;
            }
        }
        seconds
    }
}

impl Drop for Kannel {
    fn drop(&mut self) {
        // smsbox first, then the SMSC, then bearerbox.
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
