//! Application routing: where a request goes when the location service is
//! not the answer — dispatcher sets of gateways with health probes
//! ([`dispatcher`]). Sans-IO, like the rest of the core.

pub mod dispatcher;
