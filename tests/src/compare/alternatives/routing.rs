//! Plain routing, the first ceiling: the router's kernel forwards to blue's own address (no
//! NAT, no split, no conntrack). Nothing to install: the topology already routes.

use crate::compare::topology::Topology;

pub fn install(_topology: &Topology) {}
