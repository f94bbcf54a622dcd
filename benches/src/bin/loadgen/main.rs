//! End-to-end load scenarios. Each prints one JSON object on stdout.
//!
//! - `store`: deliveries through the durable queue, against raw RocksDB.
//! - `plugin`: warm component calls against the same logic called natively.
//! - `fanout`, `preempt`, `ratelimit`: the dispatcher through the sandbox
//!   connector (a simulated gateway inside the broker).
//! - `import`, `select`: the directory: a generated iHRIS registry through
//!   the mapper plugin; selector counts and freezes over a million contacts.
//! - `http`: the dispatcher through the real HTTP transport to the
//!   `gateway-sink` binary, a separate process on loopback.
//! - `api`: FHIR CommunicationRequests over HTTP to the server of
//!   `mhero serve`, from concurrent clients.
//! - `quic`: batches over the QUIC API from `mhero-client`, then status
//!   subscriptions.
//! - `kannel`: SMS through a real Kannel on loopback with delivery reports
//!   back through the webhook (Debian's kannel packages installed).
//! - `inbound`: workers' replies as signed webhook calls over HTTP to the
//!   server, through the inbound pipeline (classified, routed).
//! - `survey`: a three-question flash survey answered by the sandbox
//!   gateway's simulated workers.

mod api;
mod directory;
mod dispatch;
mod http;
mod inbound;
mod kannel;
mod plugin;
mod quic;
mod store;
mod survey;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mHero end-to-end load scenarios")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Deliveries through the durable queue: enqueue → lease → settle.
    Store(store::StoreArgs),
    /// Warm plugin calls: classify, and connector build-send + parse.
    Plugin(plugin::PluginArgs),
    /// One campaign to n recipients, no rate limit: deliveries per second.
    Fanout(dispatch::FanoutArgs),
    /// A bulk backlog on a rate-limited channel, then an emergency campaign.
    Preempt(dispatch::PreemptArgs),
    /// A channel held to its rate: achieved rate and the most in any second.
    Ratelimit(dispatch::RatelimitArgs),
    /// An iHRIS-shaped registry through the mapper into the directory.
    Import(directory::ImportArgs),
    /// Selector counts and freezes over a directory of a million.
    Select(directory::SelectArgs),
    /// Channels over real HTTP to a gateway sink in another process.
    Http(http::HttpArgs),
    /// FHIR CommunicationRequests over HTTP from concurrent clients.
    Api(api::ApiArgs),
    /// Batches over the QUIC API from one client; status subscriptions.
    Quic(quic::QuicArgs),
    Kannel(kannel::KannelArgs),
    /// Workers' replies through webhooks and the inbound pipeline.
    Inbound(inbound::InboundArgs),
    /// A three-question flash survey answered by simulated workers.
    Survey(survey::SurveyArgs),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    // The same process settings as `mhero`: what is measured is what runs.
    mhero_broker::broker::tune_process();
    match Args::parse().scenario {
        Scenario::Store(args) => store::run(&args),
        Scenario::Plugin(args) => plugin::run(&args),
        Scenario::Fanout(args) => dispatch::fanout(&args),
        Scenario::Preempt(args) => dispatch::preempt(&args),
        Scenario::Ratelimit(args) => dispatch::ratelimit(&args),
        Scenario::Http(args) => http::run(&args),
        Scenario::Api(args) => api::run(&args),
        Scenario::Quic(args) => quic::run(&args),
        Scenario::Kannel(args) => kannel::run(&args),
        Scenario::Inbound(args) => inbound::run(&args),
        Scenario::Survey(args) => survey::run(&args),
        Scenario::Import(args) => directory::import(&args),
        Scenario::Select(args) => directory::select(&args),
    }
}
