//! `mhero send` and `mhero status <campaign>`: a running server's HTTP
//! API from the command line, with a token (`--token` or `MHERO_TOKEN`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::api_client::ApiClient;

/// Where the server is and who is calling.
#[derive(clap::Args, Clone)]
pub struct Remote {
    /// The server's HTTP address.
    #[arg(long, env = "MHERO_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An API token (sender role to send, viewer to read).
    #[arg(long, env = "MHERO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Remote {
    pub fn client(&self) -> Result<ApiClient> {
        let Some(token) = &self.token else {
            bail!(
                "a token is needed: --token or MHERO_TOKEN (`mhero token create --role sender` makes one)"
            );
        };
        ApiClient::new(&self.server, token)
    }
}

#[derive(clap::Args)]
pub struct SendArgs {
    /// The message (with `--attach`, the files' caption; may be empty).
    #[arg(long)]
    text: String,
    /// A file to send with it, by a URL the gateway can fetch: `URL`
    /// (its type from the extension: .jpg, .png, .pdf, .mp4, .ogg, .mp3…)
    /// or `TYPE=URL` (`image/jpeg=https://…`); repeat for more. Only
    /// channels whose connector carries media send files.
    #[arg(long = "attach", value_name = "[TYPE=]URL")]
    attach: Vec<String>,
    /// A recipient's phone number (E.164, or national with the default
    /// country); repeat for more.
    #[arg(long = "to", value_name = "PHONE")]
    to: Vec<String>,
    /// Or: the directory's contacts a selector names
    /// (`role:nurse AND location:Location/bong`).
    #[arg(long, conflicts_with = "to")]
    selector: Option<String>,
    /// emergency, high, normal or bulk.
    #[arg(long, default_value = "normal")]
    lane: String,
    /// Channels in preference order (repeat); default: every channel the
    /// server has.
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// The campaign's name (default: the first words of the text).
    #[arg(long)]
    name: Option<String>,
    /// Wait until every recipient has ended, with a progress bar, and
    /// print the final counts.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    remote: Remote,
}

pub fn send(args: &SendArgs) -> Result<()> {
    if args.to.is_empty() && args.selector.is_none() {
        bail!("nobody to send to: give --to PHONE (repeatable) or --selector");
    }
    let client = args.remote.client()?;
    runtime()?.block_on(async {
        let channels = if args.channels.is_empty() {
            let all = client.get("/v1/channels").await?;
            all.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        } else {
            args.channels.clone()
        };
        let audience = match &args.selector {
            Some(s) => json!({"selector": s}),
            None => json!({"recipients": args.to.iter().map(|p| json!({"phone": p})).collect::<Vec<_>>()}),
        };
        let attachments = args
            .attach
            .iter()
            .map(|a| attachment(a))
            .collect::<Result<Vec<_>>>()?;
        let name = args.name.clone().unwrap_or_else(|| {
            let words: Vec<&str> = args.text.split_whitespace().take(6).collect();
            words.join(" ")
        });
        let created = client
            .post(
                "/v1/campaigns",
                &json!({
                    "name": name,
                    "lane": args.lane,
                    "body": {"default": args.text, "attachments": attachments},
                    "channels": channels,
                    "audience": audience,
                }),
                "application/json",
            )
            .await?;
        let id = created["id"]
            .as_str()
            .context("the server's answer has no campaign id")?
            .to_string();
        println!(
            "{id}: accepted {} recipients on {}",
            created["accepted"],
            channels.join(", ")
        );
        for r in created["rejected"].as_array().into_iter().flatten() {
            eprintln!("  refused --to #{}: {}", r["index"], r["reason"].as_str().unwrap_or(""));
        }
        if args.wait {
            let done = wait(&client, &id).await?;
            print_campaign(&done);
        }
        Ok(())
    })
}

/// MIME types by file extension, for `--attach URL`.
const TYPES: &[(&str, &str)] = &[
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("png", "image/png"),
    ("webp", "image/webp"),
    ("gif", "image/gif"),
    ("pdf", "application/pdf"),
    ("mp4", "video/mp4"),
    ("3gp", "video/3gpp"),
    ("ogg", "audio/ogg"),
    ("opus", "audio/ogg"),
    ("mp3", "audio/mpeg"),
    ("m4a", "audio/mp4"),
    ("amr", "audio/amr"),
    ("aac", "audio/aac"),
];

/// `--attach [TYPE=]URL` as the API's attachment.
fn attachment(arg: &str) -> Result<Value> {
    let (given, url) = match arg.split_once('=') {
        // A MIME type before the first `=` (a URL's query may hold `=`).
        Some((t, url)) if t.contains('/') && !t.contains(':') => (Some(t.trim()), url.trim()),
        _ => (None, arg.trim()),
    };
    let content_type = match given {
        Some(t) => t.to_string(),
        None => {
            let path = url.split(['?', '#']).next().unwrap_or(url);
            let ext = path
                .rsplit_once('.')
                .map(|(_, e)| e.to_ascii_lowercase())
                .filter(|e| !e.contains('/'))
                .unwrap_or_default();
            match TYPES.iter().find(|(e, _)| *e == ext) {
                Some((_, t)) => t.to_string(),
                None => bail!(
                    "--attach {arg}: cannot tell its type from the URL; give it as TYPE=URL (image/jpeg=https://…)"
                ),
            }
        }
    };
    let filename = url
        .split(['?', '#'])
        .next()
        .and_then(|p| p.rsplit('/').next())
        .filter(|f| content_type == "application/pdf" && !f.is_empty());
    let mut a = json!({"url": url, "content_type": content_type});
    if let Some(f) = filename {
        a["filename"] = json!(f);
    }
    Ok(a)
}

/// `mhero status <campaign>`: one campaign from a running server.
pub fn status(campaign: &str, json: bool, follow: bool, remote: &Remote) -> Result<()> {
    let client = remote.client()?;
    runtime()?.block_on(async {
        let c = if follow {
            wait(&client, campaign).await?
        } else {
            client.get(&format!("/v1/campaigns/{campaign}")).await?
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        } else {
            print_campaign(&c);
        }
        Ok(())
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn n(c: &Value, field: &str) -> u64 {
    c[field].as_u64().unwrap_or(0)
}

/// Follows a campaign with a progress bar until it is done.
async fn wait(client: &ApiClient, id: &str) -> Result<Value> {
    let path = format!("/v1/campaigns/{id}");
    let first = client.get(&path).await?;
    let bar = ProgressBar::new(n(&first, "total"));
    bar.set_style(ProgressStyle::with_template(
        "{prefix} {bar:32.cyan/blue} {pos:>7}/{len:7} {msg}",
    )?);
    bar.set_prefix(id.to_string());
    let mut c = first;
    loop {
        bar.set_position(n(&c, "ended"));
        bar.set_message(match c["eta_s"].as_f64() {
            Some(eta) if c["done"] != true => format!("ETA {eta:.0} s"),
            _ => String::new(),
        });
        if c["done"] == true {
            bar.finish_and_clear();
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        c = client.get(&path).await?;
    }
}

fn print_campaign(c: &Value) {
    println!(
        "{} {:?} ({}, {}): {} recipients, {} ended",
        c["id"].as_str().unwrap_or(""),
        c["name"].as_str().unwrap_or(""),
        c["lane"].as_str().unwrap_or(""),
        c["state"].as_str().unwrap_or(""),
        n(c, "total"),
        n(c, "ended"),
    );
    println!(
        "  queued {}  sent {}  delivered {}  read {}  failed {}  dead {}  expired {}  cancelled {}  retries {}  rerouted {}",
        n(c, "queued"),
        n(c, "wired") + n(c, "sent"),
        n(c, "delivered"),
        n(c, "read"),
        n(c, "failed"),
        n(c, "dead"),
        n(c, "expired"),
        n(c, "cancelled"),
        n(c, "retries"),
        n(c, "rerouted"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_take_their_type_from_the_url_or_the_argument() {
        assert_eq!(
            attachment("https://moh.example/posters/cold-chain.JPG").unwrap(),
            json!({"url": "https://moh.example/posters/cold-chain.JPG", "content_type": "image/jpeg"})
        );
        assert_eq!(
            attachment("https://moh.example/g/measles.pdf?v=2").unwrap(),
            json!({"url": "https://moh.example/g/measles.pdf?v=2", "content_type": "application/pdf",
                   "filename": "measles.pdf"})
        );
        assert_eq!(
            attachment("audio/ogg=https://moh.example/f?id=7&k=a").unwrap(),
            json!({"url": "https://moh.example/f?id=7&k=a", "content_type": "audio/ogg"})
        );
        // `=` in a query is not a type.
        let err = attachment("https://moh.example/file?id=7").unwrap_err();
        assert!(err.to_string().contains("TYPE=URL"), "{err}");
        assert!(attachment("https://moh.example/dir.d/file").is_err());
    }
}
