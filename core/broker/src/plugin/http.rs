//! `wasi:http`, linked so that components importing it load, with every
//! outgoing request denied.
//!
//! Toolchains import it whether or not a plugin makes requests
//! (componentize-js does unless its `http` feature is disabled: its
//! `fetch()` is built on it). A plugin never makes requests of its own —
//! a connector's request goes out through the broker's transport, where
//! the manifest's allowed hosts, timeouts and secrets are enforced — so
//! `outgoing-handler.handle` answers `HTTP-request-denied` at once: no
//! connection, no name lookup, nothing spawned, nothing to wait for. The
//! plugin sees the error at call time, and the broker logs the attempt
//! (within the plugin's log budget). The `types` interface (headers,
//! requests, bodies) is the stock one: building a request does no I/O.

use std::future::Future;

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::p2::bindings::http::types;
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttp, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::runtime::PluginState;

/// The hooks of a plugin's `wasi:http`: nothing is ever sent.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DenyAll;

type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for DenyAll {
    // Not reached: `handle` below refuses before any request is handed
    // over for sending. Kept denying, should a future `wasi:http` call it.
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Sent {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let (ctx, table, hooks) = self.http_parts();
        WasiHttpCtxView { ctx, table, hooks }
    }
}

/// The `outgoing-handler` interface, at the version of the stock
/// bindings (components importing an earlier 0.2 version link to it).
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

/// `outgoing-handler.handle`: drops the request and answers
/// `HTTP-request-denied`.
fn deny(
    state: &mut PluginState,
    request: Resource<HostOutgoingRequest>,
    options: Option<Resource<RequestOptions>>,
) -> wasmtime::Result<Result<Resource<HostFutureIncomingResponse>, types::ErrorCode>> {
    let (_, table, _) = state.http_parts();
    // Both resources are the host's now: drop them.
    let request = table.delete(request)?;
    if let Some(options) = options {
        table.delete(options)?;
    }
    let target = match (&request.authority, &request.path_with_query) {
        (Some(authority), Some(path)) => format!("{authority}{path}"),
        (Some(authority), None) => authority.clone(),
        _ => "(no authority)".to_string(),
    };
    // Through the plugin's log: redacted, counted, within its budget.
    super::bindings::Host::log(
        state,
        super::bindings::LogLevel::Warn,
        format!("outgoing HTTP request to {target} denied: plugins make no network requests"),
    );
    Ok(Err(types::ErrorCode::HttpRequestDenied))
}

/// Links `wasi:http/types` and the denying `wasi:http/outgoing-handler`.
pub(crate) fn link_denied_http(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    let options = wasmtime_wasi_http::p2::bindings::LinkOptions::default();
    types::add_to_linker::<_, WasiHttp>(linker, &options.into(), PluginState::http)?;
    linker.instance(OUTGOING_HANDLER)?.func_wrap(
        "handle",
        |mut store,
         (request, options): (
            Resource<HostOutgoingRequest>,
            Option<Resource<RequestOptions>>,
        )| Ok((deny(store.data_mut(), request, options)?,)),
    )?;
    Ok(())
}
