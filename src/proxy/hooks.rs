//! Routing hooks: how a program that embeds sipedge steers requests with
//! its own logic (in the style of Pingora's `ProxyHttp`). Every method has
//! a default that does nothing, so a hook implements only what it needs.
//!
//! ```text
//!  request ─► checks, admission, auth, local services (registrar, presence)
//!     ─► on_request(req, ctx)      Continue | Answer(code, reason)
//!     ─► choose_targets(req, ctx)  true: the hook's targets · false: the edge's routing
//!     ─► forwarded (one client transaction per target)
//!  final responses ─► on_response(status, ctx) for each
//!  nothing answered 2xx (not cancelled) ─► on_failure(status, ctx, targets):
//!                                          push targets to try them too (retry elsewhere)
//!  BYE ─► on_dialog_end(call_id)
//! ```
//!
//! **Hooks run inside the shard's loop**: synchronously, on the shard's
//! thread, for every request. They must not block (no network or disk I/O,
//! no locks held long, no sleeping): a slow hook stalls every call of its
//! shard. Each shard has its own instance (see [`HookFactory`]), so a hook
//! needs no locking for state it keeps per shard; its `Ctx` lives as long
//! as the request's transaction.

use core::any::Any;
use core::net::SocketAddr;
use std::sync::Arc;

use crate::sip::{Message, Method};

use super::stateful::Targets;

/// A new request, as a hook sees it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The whole parsed message (headers, body).
    pub msg: &'a Message<'a>,
    /// Where it came from.
    pub source: SocketAddr,
    /// Its digest identity was verified (when authentication is on).
    pub authenticated: bool,
}

impl Request<'_> {
    /// The method.
    pub fn method(&self) -> Method {
        self.msg.method()
    }

    /// The Request-URI's user part, if any.
    pub fn ruri_user(&self) -> Option<&[u8]> {
        self.msg.essentials().ok()?.uri?.user
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &[u8] {
        self.msg.call_id()
    }
}

/// What [`RoutingHooks::on_request`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Route it (by the hook's targets or the edge's own routing).
    Continue,
    /// Answer it here with this status and reason (no forwarding).
    Answer(u16, &'static str),
}

/// Routing hooks an embedding program implements (see the module docs).
pub trait RoutingHooks: Send + 'static {
    /// Per-request state, created for each new request and kept with its
    /// transaction until it ends.
    type Ctx: Send + 'static;

    /// A fresh context for a new request.
    fn new_ctx(&mut self) -> Self::Ctx;

    /// A new request, after the checks, admission, authentication and the
    /// local services (registrar, presence) passed it on.
    fn on_request(&mut self, req: &Request<'_>, ctx: &mut Self::Ctx) -> Decision {
        let _ = (req, ctx);
        Decision::Continue
    }

    /// Chooses the targets: push them into `targets` and return true; false
    /// leaves routing to the edge (Route, location, dispatcher, upstream).
    fn choose_targets(
        &mut self,
        req: &Request<'_>,
        ctx: &mut Self::Ctx,
        targets: &mut Targets,
    ) -> bool {
        let _ = (req, ctx, targets);
        false
    }

    /// A target's final response (`status` ≥ 200; 408 when it timed out).
    fn on_response(&mut self, status: u16, ctx: &mut Self::Ctx) {
        let _ = (status, ctx);
    }

    /// No target answered 2xx and the caller did not cancel: `status` is the
    /// best failure. Push targets into `targets` to try them as well (retry
    /// elsewhere); leave it empty to send the failure upstream.
    fn on_failure(&mut self, status: u16, ctx: &mut Self::Ctx, targets: &mut Targets) {
        let _ = (status, ctx, targets);
    }

    /// A BYE ended the dialog with this Call-ID (seen by the shard the BYE
    /// arrived on, which may differ from the INVITE's with several shards).
    fn on_dialog_end(&mut self, call_id: &[u8]) {
        let _ = call_id;
    }
}

/// [`RoutingHooks`] with the context type erased, as a shard holds them.
pub trait DynHooks: Send {
    /// [`RoutingHooks::new_ctx`].
    fn new_ctx(&mut self) -> Box<dyn Any + Send>;
    /// [`RoutingHooks::on_request`].
    fn on_request(&mut self, req: &Request<'_>, ctx: &mut (dyn Any + Send)) -> Decision;
    /// [`RoutingHooks::choose_targets`].
    fn choose_targets(
        &mut self,
        req: &Request<'_>,
        ctx: &mut (dyn Any + Send),
        targets: &mut Targets,
    ) -> bool;
    /// [`RoutingHooks::on_response`].
    fn on_response(&mut self, status: u16, ctx: &mut (dyn Any + Send));
    /// [`RoutingHooks::on_failure`].
    fn on_failure(&mut self, status: u16, ctx: &mut (dyn Any + Send), targets: &mut Targets);
    /// [`RoutingHooks::on_dialog_end`].
    fn on_dialog_end(&mut self, call_id: &[u8]);
}

impl<H: RoutingHooks> DynHooks for H {
    fn new_ctx(&mut self) -> Box<dyn Any + Send> {
        Box::new(RoutingHooks::new_ctx(self))
    }

    fn on_request(&mut self, req: &Request<'_>, ctx: &mut (dyn Any + Send)) -> Decision {
        match ctx.downcast_mut::<H::Ctx>() {
            Some(c) => RoutingHooks::on_request(self, req, c),
            None => Decision::Continue,
        }
    }

    fn choose_targets(
        &mut self,
        req: &Request<'_>,
        ctx: &mut (dyn Any + Send),
        targets: &mut Targets,
    ) -> bool {
        match ctx.downcast_mut::<H::Ctx>() {
            Some(c) => RoutingHooks::choose_targets(self, req, c, targets),
            None => false,
        }
    }

    fn on_response(&mut self, status: u16, ctx: &mut (dyn Any + Send)) {
        if let Some(c) = ctx.downcast_mut::<H::Ctx>() {
            RoutingHooks::on_response(self, status, c);
        }
    }

    fn on_failure(&mut self, status: u16, ctx: &mut (dyn Any + Send), targets: &mut Targets) {
        if let Some(c) = ctx.downcast_mut::<H::Ctx>() {
            RoutingHooks::on_failure(self, status, c, targets);
        }
    }

    fn on_dialog_end(&mut self, call_id: &[u8]) {
        RoutingHooks::on_dialog_end(self, call_id);
    }
}

/// Makes each shard's hooks (its id in, its instance out).
pub type HookFactory = Arc<dyn Fn(u16) -> Box<dyn DynHooks> + Send + Sync>;

/// A [`HookFactory`] from a function making one `H` per shard.
pub fn factory<H: RoutingHooks>(make: impl Fn(u16) -> H + Send + Sync + 'static) -> HookFactory {
    Arc::new(move |shard| Box::new(make(shard)) as Box<dyn DynHooks>)
}
