//! The inbound pipeline's configuration: `[inbound]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dispatch::Body;

/// `[inbound]`: how replies are read and where they go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    /// The same text from the same sender within this many seconds is a
    /// duplicate (a worker pressing send twice, a gateway retrying with a
    /// new id): kept, marked, not routed again. 0: off.
    pub dedup_window_s: u64,
    /// A reply answers what was last handed over to its sender on its
    /// channel if that was at most this many hours before; older sends are
    /// not what it answers.
    pub reply_window_h: u64,
    /// Classifier plugins every reply goes through, in order; the first
    /// sure of a label decides it, the first that detects a language sets
    /// it.
    pub classifiers: Vec<String>,
    /// Per channel, a chain that replaces `classifiers`.
    pub channel_classifiers: BTreeMap<String, Vec<String>>,
    /// A classification below this confidence is not sure.
    pub min_confidence: f32,
    /// Trigger words by action: a reply whose first word is one of them
    /// goes to the action. `opt_out` (the directory stops selecting the
    /// sender at once), `opt_in` and `help` are acted on here; any other
    /// action (`report`, `stock`, `case`) routes the reply under that name
    /// for its workflow and subscribers. Words are matched without case or
    /// accents. Setting this table replaces the defaults.
    pub keywords: BTreeMap<String, Vec<String>>,
    /// What the broker answers, by action, in the sender's language when
    /// a variant exists. An action without an answer gets none.
    pub answers: BTreeMap<String, Body>,
    /// Integrators' endpoints that receive every processed reply.
    pub subscribers: Vec<SubscriberConfig>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        let words = |ws: &[&str]| ws.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let keywords = [
            (
                "opt_out",
                words(&[
                    "STOP",
                    "STOPALL",
                    "UNSUBSCRIBE",
                    "ARRET",
                    "ARRETER",
                    "PARAR",
                    "PARE",
                    "SAIR",
                    "ACHA",
                    "SITISHA",
                ]),
            ),
            (
                "opt_in",
                words(&[
                    "START",
                    "UNSTOP",
                    "DEMARRER",
                    "REPRENDRE",
                    "INICIAR",
                    "ANZA",
                ]),
            ),
            ("help", words(&["HELP", "AIDE", "AJUDA", "MSAADA"])),
            (
                "report",
                words(&["REPORT", "RAPPORT", "RELATORIO", "RIPOTI"]),
            ),
            ("stock", words(&["STOCK"])),
            ("case", words(&["CASE", "CASES", "CAS", "CASO"])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let answer = |default: &str, variants: &[(&str, &str)]| Body {
            default: default.into(),
            variants: variants
                .iter()
                .map(|(l, t)| (l.to_string(), t.to_string()))
                .collect(),
            attachments: Vec::new(),
        };
        let answers = [
            (
                "opt_out",
                answer(
                    "You will receive no more messages from the Ministry of Health. Reply START to receive them again.",
                    &[
                        (
                            "fr",
                            "Vous ne recevrez plus de messages du ministère de la Santé. Répondez DEMARRER pour les recevoir à nouveau.",
                        ),
                        (
                            "pt",
                            "Não receberá mais mensagens do Ministério da Saúde. Responda INICIAR para voltar a recebê-las.",
                        ),
                        (
                            "sw",
                            "Hutapokea tena ujumbe kutoka Wizara ya Afya. Jibu ANZA kuanza kupokea tena.",
                        ),
                    ],
                ),
            ),
            (
                "opt_in",
                answer(
                    "You will receive messages from the Ministry of Health again. Reply STOP to stop them.",
                    &[
                        (
                            "fr",
                            "Vous recevrez à nouveau les messages du ministère de la Santé. Répondez ARRET pour les arrêter.",
                        ),
                        (
                            "pt",
                            "Voltará a receber mensagens do Ministério da Saúde. Responda PARAR para as parar.",
                        ),
                        (
                            "sw",
                            "Utapokea tena ujumbe kutoka Wizara ya Afya. Jibu ACHA kuusimamisha.",
                        ),
                    ],
                ),
            ),
            (
                "help",
                answer(
                    "Ministry of Health messages. Reply to a question with its answer, REPORT or STOCK to send a report, STOP to stop messages.",
                    &[
                        (
                            "fr",
                            "Messages du ministère de la Santé. Répondez à une question par sa réponse, RAPPORT ou STOCK pour un rapport, ARRET pour arrêter les messages.",
                        ),
                        (
                            "pt",
                            "Mensagens do Ministério da Saúde. Responda a uma pergunta com a resposta, RELATORIO ou STOCK para um relatório, PARAR para parar as mensagens.",
                        ),
                        (
                            "sw",
                            "Ujumbe wa Wizara ya Afya. Jibu swali kwa jibu lake, RIPOTI au STOCK kutuma ripoti, ACHA kusimamisha ujumbe.",
                        ),
                    ],
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            dedup_window_s: 600,
            reply_window_h: 72,
            classifiers: vec!["keywords".into(), "stock-report".into()],
            channel_classifiers: BTreeMap::new(),
            min_confidence: 0.5,
            keywords,
            answers,
            subscribers: Vec::new(),
        }
    }
}

/// `[[inbound.subscribers]]`: an integrator's HTTPS endpoint that gets
/// processed replies as signed JSON POSTs, in order, at least once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Names it in metrics, logs and the API; also its position's key, so
    /// renaming it starts it again from the beginning.
    pub name: String,
    pub url: String,
    /// HMAC-SHA256 key: each call carries
    /// `X-Mhero-Signature: sha256=<hex of HMAC(secret, body)>`.
    pub secret: String,
    /// Routes it wants (`inbox`, `opt_out`, `report`…); empty: all.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Most replies per call.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Attempts per call before its replies are set aside as undelivered.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Waits between attempts (ms), the last one repeating.
    #[serde(default = "default_backoff")]
    pub backoff_ms: Vec<u64>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_batch() -> usize {
    100
}

fn default_attempts() -> u32 {
    8
}

fn default_backoff() -> Vec<u64> {
    vec![1_000, 5_000, 30_000, 120_000, 600_000]
}

fn default_timeout() -> u64 {
    10_000
}

impl InboundConfig {
    /// Names the key path of anything out of range.
    pub fn validate(&self, channels: &[&str]) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err("inbound.min_confidence must be between 0 and 1".into());
        }
        for c in self.channel_classifiers.keys() {
            if !channels.contains(&c.as_str()) {
                return Err(format!(
                    "inbound.channel_classifiers.{c}: there is no channel {c:?}"
                ));
            }
        }
        let mut seen = BTreeMap::new();
        for (action, words) in &self.keywords {
            for w in words {
                let n = super::keywords::fold(w);
                if n.is_empty() || n.contains(' ') {
                    return Err(format!("inbound.keywords.{action}: {w:?} must be one word"));
                }
                if let Some(other) = seen.insert(n, action)
                    && other != action
                {
                    return Err(format!(
                        "inbound.keywords: {w:?} is a trigger of both {other} and {action}"
                    ));
                }
            }
        }
        for action in self.answers.keys() {
            if !self.keywords.contains_key(action) {
                return Err(format!(
                    "inbound.answers.{action}: no keyword triggers {action:?}"
                ));
            }
        }
        let mut names = Vec::new();
        for (i, s) in self.subscribers.iter().enumerate() {
            let path = format!("inbound.subscribers[{i}]");
            if s.name.is_empty() || names.contains(&&s.name) {
                return Err(format!("{path}.name must be set and unique"));
            }
            names.push(&s.name);
            let url = reqwest::Url::parse(&s.url).map_err(|e| format!("{path}.url: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{path}.url must be http(s)"));
            }
            if s.secret.len() < 16 {
                return Err(format!(
                    "{path}.secret must be at least 16 characters (it signs every call)"
                ));
            }
            if s.batch == 0 || s.batch > 1000 {
                return Err(format!("{path}.batch must be 1 to 1000"));
            }
            if s.max_attempts == 0 || s.backoff_ms.is_empty() || s.timeout_ms == 0 {
                return Err(format!(
                    "{path}: max_attempts, backoff_ms and timeout_ms must be set"
                ));
            }
        }
        Ok(())
    }

    /// The classifier chain of `channel`.
    pub fn chain(&self, channel: &str) -> &[String] {
        self.channel_classifiers
            .get(channel)
            .unwrap_or(&self.classifiers)
    }
}
