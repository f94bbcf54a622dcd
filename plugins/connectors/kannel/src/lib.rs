//! Connector for Kannel's smsbox: `GET /cgi-bin/sendsms` out, delivery
//! reports and inbound SMS back through Kannel's HTTP callbacks. See
//! README.md for the Kannel side of the configuration.

use mhero_sdk::connector::{
    Connector, ConnectorInfo, Failure, HttpRequest, HttpResponse, InboundMessage, Lane,
    OutboundMessage, PluginError, PluginInfo, PluginKind, Receipt, ReceiptStatus, RetryInfo,
    SendOutcome, WebhookEvent, WebhookResult, check_token, required, setting,
};
use mhero_sdk::host::{self, Level};
use mhero_sdk::sms::{self, Encoding};

pub struct Kannel;

/// The `dlr-mask` asked for unless `dlr_mask` says otherwise: delivered
/// (1), undelivered (2), taken by the SMSC (8), refused by the SMSC (16).
pub const DEFAULT_DLR_MASK: u32 = 1 | 2 | 8 | 16;

/// Kannel's `%d`: the kind of a delivery report.
mod dlr {
    pub const DELIVERED: u32 = 1;
    pub const UNDELIVERED: u32 = 2;
    pub const BUFFERED: u32 = 4;
    pub const SMSC_ACK: u32 = 8;
    pub const SMSC_REJECT: u32 = 16;
}

/// Kannel's `priority` (0–3, higher first through bearerbox's queues).
fn priority(lane: Lane) -> &'static str {
    match lane {
        Lane::Emergency => "3",
        Lane::High => "2",
        Lane::Normal => "1",
        Lane::Bulk => "0",
    }
}

/// The callback URL for `message`'s delivery reports: `webhook_url` with
/// the token, the delivery id and Kannel's escapes (`%d` the report's kind,
/// `%T` its time, `%A` the SMSC's answer).
fn dlr_url(webhook_url: &str, token: &str, id: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("type", "dlr")
        .append_pair("id", id)
        .finish();
    let sep = if webhook_url.contains('?') { '&' } else { '?' };
    format!("{webhook_url}{sep}{query}&status=%d&ts=%T&answer=%A")
}

/// Kannel's `validity`: minutes the SMSC keeps trying, from the message's
/// expiry; an expired message is refused.
fn validity_minutes(expires_at_ms: u64, now_ms: u64) -> Result<u64, PluginError> {
    if expires_at_ms <= now_ms {
        return Err(PluginError::invalid(
            "the message expired before it was sent",
        ));
    }
    Ok((expires_at_ms - now_ms).div_ceil(60_000))
}

/// The query pairs of a URL (or of a form body).
fn pairs(query: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(query).into_owned().collect()
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Kannel's `%T` (Unix seconds) as milliseconds.
fn millis(ts: Option<&str>) -> Option<u64> {
    ts?.trim().parse::<u64>().ok()?.checked_mul(1000)
}

/// A sender as Kannel gives it, in E.164 where it is recognisably
/// international (`+…`, `00…`); anything else as it came (a short code, or
/// a national number the directory resolves with the country).
fn address(raw: &str) -> String {
    let raw = raw.trim();
    match raw.strip_prefix("00") {
        Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) => {
            format!("+{rest}")
        }
        _ => raw.to_string(),
    }
}

/// The body of a sendsms answer, trimmed.
fn answer(response: &HttpResponse) -> String {
    response.text().trim().chars().take(200).collect()
}

impl Connector for Kannel {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "kannel".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "SMS through Kannel's sendsms, with delivery reports and inbound SMS"
                    .into(),
            },
            max_batch: 1,
            counts_segments: true,
            // sendsms has no idempotency key: a message re-sent after a
            // crash between Kannel's answer and the broker's commit goes
            // out twice.
            idempotent: false,
        }
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        if message.to.trim().is_empty() {
            return Err(PluginError::invalid("message has no recipient"));
        }
        let base = required("base_url")?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("username", &required("username")?)
            .append_pair("password", &required("password")?)
            .append_pair("to", &message.to)
            .append_pair("text", &message.text)
            .append_pair("charset", "UTF-8")
            .append_pair(
                "coding",
                match sms::encoding(&message.text) {
                    Encoding::Gsm7 => "0",
                    Encoding::Ucs2 => "2",
                },
            )
            .append_pair("priority", priority(message.lane));
        if let Some(from) = setting("from") {
            query.append_pair("from", &from);
        }
        if let Some(smsc) = setting("smsc") {
            query.append_pair("smsc", &smsc);
        }
        if let Some(expires) = message.expires_at_ms {
            let minutes = validity_minutes(expires, host::now_ms())?;
            query.append_pair("validity", &minutes.to_string());
        }
        if let Some(webhook_url) = setting("webhook_url") {
            let mask = match setting("dlr_mask") {
                Some(m) => m
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|m| (1..=31).contains(m))
                    .ok_or_else(|| {
                        PluginError::Unauthorized(format!(
                            "setting `dlr_mask` {m:?} is not 1 to 31"
                        ))
                    })?,
                None => DEFAULT_DLR_MASK,
            };
            let token = required("webhook_token")?;
            query
                .append_pair("dlr-mask", &mask.to_string())
                .append_pair("dlr-url", &dlr_url(&webhook_url, &token, &message.id));
        }
        Ok(HttpRequest {
            method: "GET".into(),
            url: format!(
                "{}/cgi-bin/sendsms?{}",
                base.trim_end_matches('/'),
                query.finish()
            ),
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        let text = answer(&response);
        match response.status {
            // `0: Accepted for delivery`, or `3: Queued for later delivery`
            // while the SMSC is down (Kannel keeps it in its store). Kannel
            // gives no id of its own: the delivery reports name the message
            // by the id in their callback URL, which the empty id asks the
            // host to match on.
            200..=299 => Ok(SendOutcome::Accepted(String::new())),
            // White- and black-lists: this number cannot be reached here.
            403 if text.contains("denied by white") || text.contains("barred") => {
                Ok(SendOutcome::Failed(Failure {
                    reason: format!("kannel: {text}"),
                    unreachable: true,
                }))
            }
            401 | 403 => Err(PluginError::Unauthorized(format!("kannel: {text}"))),
            429 | 500..=599 => Ok(SendOutcome::Retry(RetryInfo {
                after_ms: response.retry_after_ms(),
                reason: format!("kannel answered {}: {text}", response.status),
            })),
            400..=499 => Ok(SendOutcome::Failed(Failure {
                reason: format!("kannel refused it ({}): {text}", response.status),
                unreachable: false,
            })),
            status => Err(PluginError::invalid(format!(
                "unexpected status {status}: {text}"
            ))),
        }
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        let expected = required("webhook_token")?;
        // Kannel calls back with GET (the values in the query) or, with
        // `post-url`, POST (a form body).
        let mut values = pairs(
            request
                .url
                .split_once('?')
                .map_or("", |(_, q)| q)
                .as_bytes(),
        );
        if request
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            values.extend(pairs(&request.body));
        }
        check_token(&request, None, &expected)?;
        let events = match get(&values, "type") {
            Some("dlr") => receipt(&values)?.into_iter().collect(),
            Some("mo") => vec![inbound(&values)?],
            other => {
                return Err(PluginError::invalid(format!(
                    "callback type {other:?} is neither `dlr` nor `mo`"
                )));
            }
        };
        Ok(WebhookResult {
            events,
            // An sms-service answers with text that Kannel would send back
            // as a reply; empty, and `max-messages = 0`, sends nothing.
            response: HttpResponse::with_body(200, "text/plain", Vec::new()),
        })
    }
}

/// A delivery report; none for a kind that changes nothing (buffered).
fn receipt(values: &[(String, String)]) -> Result<Option<WebhookEvent>, PluginError> {
    let id = get(values, "id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| PluginError::invalid("delivery report without `id`"))?;
    let kind = get(values, "status")
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| PluginError::invalid("delivery report without a numeric `status`"))?;
    let answer = get(values, "answer")
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let (status, reason) = match kind {
        dlr::DELIVERED => (ReceiptStatus::Delivered, None),
        dlr::SMSC_ACK => (ReceiptStatus::Sent, None),
        dlr::UNDELIVERED => (
            ReceiptStatus::Failed,
            Some(format!(
                "undelivered: {}",
                answer.unwrap_or("no reason given")
            )),
        ),
        dlr::SMSC_REJECT => (
            ReceiptStatus::Failed,
            Some(format!(
                "refused by the SMSC: {}",
                answer.unwrap_or("no reason given")
            )),
        ),
        dlr::BUFFERED => return Ok(None),
        other => {
            host::log(
                Level::Warn,
                &format!("Kannel delivery report of unknown kind {other} ignored."),
            );
            return Ok(None);
        }
    };
    Ok(Some(WebhookEvent::Receipt(Receipt {
        external_id: id.to_string(),
        status,
        reason,
        at_ms: millis(get(values, "ts")),
    })))
}

/// An inbound SMS (an sms-service's `get-url`).
fn inbound(values: &[(String, String)]) -> Result<WebhookEvent, PluginError> {
    let from = get(values, "from")
        .map(address)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| PluginError::invalid("inbound SMS without `from`"))?;
    Ok(WebhookEvent::Inbound(InboundMessage {
        from,
        text: get(values, "text").unwrap_or_default().to_string(),
        external_id: get(values, "id")
            .filter(|i| !i.is_empty())
            .map(String::from),
        received_at_ms: millis(get(values, "ts")),
    }))
}

mhero_sdk::export_connector!(Kannel);

#[cfg(test)]
mod tests;
