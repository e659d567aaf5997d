//! A small help-desk proxy built on sipedge as a library: every call to
//! `sip:desk@…` goes to the operator with the fewest calls in progress;
//! an operator that is busy or fails is skipped for the next one. Anything
//! else is routed by sipedge as usual (registrar, location, Route).
//!
//! ```sh
//! cargo run --release --example least_loaded -- \
//!     --listen udp:127.0.0.1:5080 --operator 127.0.0.1:5091 --operator 127.0.0.1:5092
//! ```
//!
//! Every `sipedge run` flag works too (`--data-dir`, `--control`, …). The
//! hooks of one shard keep its own counts: run it with one shard (the
//! default here) for counts that are exact over all calls.

use std::collections::HashMap;
use std::net::SocketAddr;

use clap::Parser;
use sipedge::cli::RunArgs;
use sipedge::proxy::hooks::{self, Request, RoutingHooks};
use sipedge::proxy::stateful::Targets;
use sipedge::sip::Method;

#[derive(Parser)]
#[command(about = "A help-desk proxy: calls to sip:desk@… ring the least-loaded operator")]
struct Args {
    /// An operator's address (repeatable).
    #[arg(long = "operator", value_name = "IP:PORT", required = true)]
    operators: Vec<SocketAddr>,
    /// The desk's user part.
    #[arg(long, default_value = "desk")]
    desk: String,
    #[command(flatten)]
    run: RunArgs,
}

/// The help desk of one shard: each operator's calls in progress.
struct Desk {
    name: Vec<u8>,
    operators: Vec<SocketAddr>,
    load: Vec<u32>,
    /// Answered calls: Call-ID → operator, until their BYE.
    answered: HashMap<Vec<u8>, usize>,
}

/// One call to the desk: which operator it rings now, and who was tried.
#[derive(Default)]
struct Call {
    call_id: Vec<u8>,
    ringing: Option<usize>,
    tried: Vec<usize>,
}

impl Desk {
    /// The least-loaded operator not tried yet (ties: the first).
    fn pick(&mut self, call: &mut Call, targets: &mut Targets) -> bool {
        let best = (0..self.operators.len())
            .filter(|i| !call.tried.contains(i))
            .min_by_key(|&i| self.load[i]);
        let Some(i) = best else { return false };
        self.load[i] += 1;
        call.ringing = Some(i);
        call.tried.push(i);
        targets.push(b"", b"", Some(self.operators[i]), 1000);
        true
    }
}

impl RoutingHooks for Desk {
    type Ctx = Call;

    fn new_ctx(&mut self) -> Call {
        Call::default()
    }

    fn choose_targets(
        &mut self,
        req: &Request<'_>,
        call: &mut Call,
        targets: &mut Targets,
    ) -> bool {
        let initial = req.msg.to().ok().and_then(|t| t.tag()).is_none();
        if req.method() != Method::Invite || !initial || req.ruri_user() != Some(&self.name[..]) {
            return false;
        }
        call.call_id = req.call_id().to_vec();
        self.pick(call, targets)
    }

    fn on_response(&mut self, status: u16, call: &mut Call) {
        let Some(i) = call.ringing.take() else { return };
        if (200..300).contains(&status) {
            // In progress until its BYE.
            self.answered.insert(call.call_id.clone(), i);
        } else {
            self.load[i] = self.load[i].saturating_sub(1);
        }
    }

    fn on_failure(&mut self, _status: u16, call: &mut Call, targets: &mut Targets) {
        if !call.call_id.is_empty() {
            self.pick(call, targets); // the next operator, if any is left
        }
    }

    fn on_dialog_end(&mut self, call_id: &[u8]) {
        if let Some(i) = self.answered.remove(call_id) {
            self.load[i] = self.load[i].saturating_sub(1);
        }
    }
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    args.run.shards.get_or_insert(1);
    let (name, operators) = (args.desk.into_bytes(), args.operators);
    let factory = hooks::factory(move |_shard| Desk {
        name: name.clone(),
        load: vec![0; operators.len()],
        operators: operators.clone(),
        answered: HashMap::new(),
    });
    match sipedge::cli::run_with(&args.run, Some(factory)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("least_loaded: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
