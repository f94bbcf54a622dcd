//! The typed calls of each world, with input and output sizes measured
//! against the plugin's limits.

use super::bindings::classifier_types::{Classification, ClassifierInfo, ClassifyContext};
use super::bindings::connector_types::{
    Attachment, BatchOutcome, ConnectorInfo, OutboundMessage, Receipt, SendOutcome, StatusQuery,
    WebhookEvent, WebhookResult,
};
use super::bindings::fhir_types::{Mapped, MapperInfo};
use super::bindings::{Header, HttpRequest, HttpResponse, classifier, connector, fhir};
use super::manifest::Kind;
use super::runtime::{CallError, ExtraFuncs, Plugin, WorldInstance};

/// Bytes of text and data a value carries (the measure of input and output
/// caps; fixed-size fields count nothing).
pub trait Size {
    fn size(&self) -> usize;
}

impl Size for String {
    fn size(&self) -> usize {
        self.len()
    }
}

impl<T: Size> Size for Option<T> {
    fn size(&self) -> usize {
        self.as_ref().map_or(0, Size::size)
    }
}

impl<T: Size> Size for Vec<T> {
    /// Each element counts what it holds in host memory, so a list of a
    /// million empty entries is not free.
    fn size(&self) -> usize {
        self.iter().map(Size::size).sum::<usize>() + self.len() * std::mem::size_of::<T>()
    }
}

impl Size for Header {
    fn size(&self) -> usize {
        self.name.len() + self.value.len()
    }
}

impl Size for HttpRequest {
    fn size(&self) -> usize {
        self.method.len() + self.url.len() + self.headers.size() + self.body.len()
    }
}

impl Size for HttpResponse {
    fn size(&self) -> usize {
        self.headers.size() + self.body.len()
    }
}

impl Size for OutboundMessage {
    fn size(&self) -> usize {
        self.id.len() + self.to.len() + self.text.len() + self.language.size()
    }
}

impl Size for Attachment {
    fn size(&self) -> usize {
        self.url.len() + self.content_type.len() + self.filename.size()
    }
}

impl Size for StatusQuery {
    fn size(&self) -> usize {
        self.request.size()
    }
}

impl Size for Receipt {
    fn size(&self) -> usize {
        self.external_id.len() + self.reason.size()
    }
}

impl Size for SendOutcome {
    fn size(&self) -> usize {
        match self {
            SendOutcome::Accepted(id) => id.len(),
            SendOutcome::Retry(r) => r.reason.len(),
            SendOutcome::Failed(f) => f.reason.len(),
        }
    }
}

impl Size for BatchOutcome {
    fn size(&self) -> usize {
        self.id.len() + self.outcome.size()
    }
}

impl Size for WebhookEvent {
    fn size(&self) -> usize {
        match self {
            WebhookEvent::Receipt(r) => r.size(),
            WebhookEvent::Inbound(m) => m.from.len() + m.text.len() + m.external_id.size(),
        }
    }
}

impl Size for WebhookResult {
    fn size(&self) -> usize {
        self.events.size() + self.response.size()
    }
}

impl Size for Classification {
    fn size(&self) -> usize {
        self.label.len()
            + self
                .fields
                .iter()
                .map(|f| f.name.len() + f.value.len())
                .sum::<usize>()
            + self.language.size()
    }
}

impl Size for ClassifyContext {
    fn size(&self) -> usize {
        self.choices.size() + self.language_hint.size()
    }
}

impl Size for Mapped {
    fn size(&self) -> usize {
        let contacts: usize = self
            .contacts
            .iter()
            .map(|c| {
                c.source_id.len()
                    + c.name.len()
                    + c.telecoms
                        .iter()
                        .map(|t| t.system.len() + t.value.len() + t.use_.size())
                        .sum::<usize>()
                    + c.languages.size()
                    + c.roles.size()
                    + c.facilities.size()
                    + c.organizations.size()
                    + c.location_ancestry.size()
            })
            .sum();
        let locations: usize = self
            .locations
            .iter()
            .map(|l| l.source_id.len() + l.name.len() + l.parent.size() + l.kind.size())
            .sum();
        let groups: usize = self
            .groups
            .iter()
            .map(|g| g.source_id.len() + g.name.len() + g.members.size())
            .sum();
        let errors: usize = self
            .errors
            .iter()
            .map(|e| e.resource.size() + e.message.len())
            .sum();
        contacts + locations + groups + errors
    }
}

impl WorldInstance {
    // The kind of a plugin's instances is the kind its manifest declared
    // and its component was checked against at load; every call checks
    // the kind first. A mismatch here is a bug, not bad input.
    fn connector(&self) -> &connector::Connector {
        match self {
            WorldInstance::Connector(i, _) => i,
            _ => unreachable!("connector call on a plugin of another kind"),
        }
    }

    fn extras(&self) -> &ExtraFuncs {
        match self {
            WorldInstance::Connector(_, e) => e,
            _ => unreachable!("connector call on a plugin of another kind"),
        }
    }

    fn classifier(&self) -> &classifier::Classifier {
        match self {
            WorldInstance::Classifier(i) => i,
            _ => unreachable!("classifier call on a plugin of another kind"),
        }
    }

    fn fhir(&self) -> &fhir::FhirMapper {
        match self {
            WorldInstance::Fhir(i) => i,
            _ => unreachable!("fhir-mapper call on a plugin of another kind"),
        }
    }
}

impl Plugin {
    fn expect(&self, kind: Kind) -> Result<(), CallError> {
        if self.kind() == kind {
            Ok(())
        } else {
            Err(self.wrong_kind(kind))
        }
    }

    pub fn connector_info(&self) -> Result<ConnectorInfo, CallError> {
        self.expect(Kind::Connector)?;
        self.call(
            0,
            |s, w| Ok(Ok(w.connector().call_describe(s)?)),
            |i| i.plugin.name.len() + i.plugin.summary.len(),
        )
    }

    pub fn build_send(&self, message: &OutboundMessage) -> Result<HttpRequest, CallError> {
        self.expect(Kind::Connector)?;
        self.call(
            message.size(),
            |s, w| w.connector().call_build_send(s, message),
            Size::size,
        )
    }

    pub fn build_send_batch(&self, messages: &[OutboundMessage]) -> Result<HttpRequest, CallError> {
        self.expect(Kind::Connector)?;
        let input = messages.iter().map(Size::size).sum();
        self.call(
            input,
            |s, w| w.connector().call_build_send_batch(s, messages),
            Size::size,
        )
    }

    pub fn parse_send_response(&self, response: &HttpResponse) -> Result<SendOutcome, CallError> {
        self.expect(Kind::Connector)?;
        self.call(
            response.size(),
            |s, w| w.connector().call_parse_send_response(s, response),
            Size::size,
        )
    }

    pub fn parse_batch_response(
        &self,
        messages: &[OutboundMessage],
        response: &HttpResponse,
    ) -> Result<Vec<BatchOutcome>, CallError> {
        self.expect(Kind::Connector)?;
        let input = messages.iter().map(Size::size).sum::<usize>() + response.size();
        self.call(
            input,
            |s, w| {
                w.connector()
                    .call_parse_batch_response(s, messages, response)
            },
            Size::size,
        )
    }

    /// Whether this connector sends files (exports `media`, WIT 1.1).
    pub fn carries_media(&self) -> bool {
        self.extras().is_some_and(|e| e.media())
    }

    /// Whether this connector answers status queries (exports
    /// `status-poll`, WIT 1.1).
    pub fn answers_status_queries(&self) -> bool {
        self.extras().is_some_and(|e| e.status_poll())
    }

    /// Calls `build-send-media`; a connector without it is refused here,
    /// before any call.
    pub fn build_send_media(
        &self,
        message: &OutboundMessage,
        attachments: &[Attachment],
    ) -> Result<HttpRequest, CallError> {
        self.expect(Kind::Connector)?;
        if !self.carries_media() {
            return Err(self.missing_export("media"));
        }
        self.call(
            message.size() + attachments.iter().map(Size::size).sum::<usize>(),
            |s, w| w.extras().call_build_send_media(s, message, attachments),
            Size::size,
        )
    }

    pub fn build_status_query(&self, external_ids: &[String]) -> Result<StatusQuery, CallError> {
        self.expect(Kind::Connector)?;
        if !self.answers_status_queries() {
            return Err(self.missing_export("status-poll"));
        }
        self.call(
            external_ids.iter().map(String::len).sum(),
            |s, w| w.extras().call_build_status_query(s, external_ids),
            Size::size,
        )
    }

    pub fn parse_status_answer(
        &self,
        external_ids: &[String],
        response: &HttpResponse,
    ) -> Result<Vec<Receipt>, CallError> {
        self.expect(Kind::Connector)?;
        if !self.answers_status_queries() {
            return Err(self.missing_export("status-poll"));
        }
        self.call(
            external_ids.iter().map(String::len).sum::<usize>() + response.size(),
            |s, w| {
                w.extras()
                    .call_parse_status_answer(s, external_ids, response)
            },
            Size::size,
        )
    }

    pub fn handle_webhook(&self, request: &HttpRequest) -> Result<WebhookResult, CallError> {
        self.expect(Kind::Connector)?;
        self.call(
            request.size(),
            |s, w| w.connector().call_handle_webhook(s, request),
            Size::size,
        )
    }

    pub fn classifier_info(&self) -> Result<ClassifierInfo, CallError> {
        self.expect(Kind::Classifier)?;
        self.call(
            0,
            |s, w| Ok(Ok(w.classifier().call_describe(s)?)),
            |i| i.plugin.name.len() + i.plugin.summary.len(),
        )
    }

    pub fn classify(
        &self,
        text: &str,
        context: &ClassifyContext,
    ) -> Result<Classification, CallError> {
        self.expect(Kind::Classifier)?;
        self.call(
            text.len() + context.size(),
            |s, w| w.classifier().call_classify(s, text, context),
            Size::size,
        )
    }

    pub fn mapper_info(&self) -> Result<MapperInfo, CallError> {
        self.expect(Kind::FhirMapper)?;
        self.call(
            0,
            |s, w| Ok(Ok(w.fhir().call_describe(s)?)),
            |i| i.plugin.name.len() + i.plugin.summary.len(),
        )
    }

    pub fn map_resources(&self, json: &str) -> Result<Mapped, CallError> {
        self.expect(Kind::FhirMapper)?;
        self.call(
            json.len(),
            |s, w| w.fhir().call_map_resources(s, json),
            Size::size,
        )
    }
}
