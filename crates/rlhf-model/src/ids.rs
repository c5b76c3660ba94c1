//! Stable parameter ids.
//!
//! burn keys optimiser state by [`ParamId`], which is random by default. A model loaded from a
//! checkpoint would then get new ids and its saved optimiser state would match nothing. Every
//! model this crate builds instead takes ids derived from each parameter's path in the module
//! tree (FNV-1a of `namespace` and the path), so that a resumed run finds its optimiser state.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::prelude::*;

struct PathIds {
    namespace: u64,
    path: Vec<String>,
}

fn fnv1a(seed: u64, parts: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(b'/')) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl ModuleMapper for PathIds {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // Option fields (biases) do not enter a module level, so add the rank to tell a
        // weight [d_in, d_out] from a bias [d_out] of the same Linear.
        let mut parts = self.path.clone();
        parts.push(format!("rank{D}"));
        param.id = ParamId::from(fnv1a(self.namespace, &parts));
        param
    }
}

/// Gives every float parameter of `module` an id derived from its path and `namespace`.
pub fn with_stable_ids<M: Module>(module: M, namespace: u64) -> M {
    module.map(&mut PathIds {
        namespace,
        path: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ModuleVisitor;

    struct Collect(Vec<u64>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id.val());
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let device = Device::flex();
        let cfg = crate::ModelConfig::tiny_llama(16, 32, 2);
        let map = crate::init_weights(&cfg, crate::HeadKind::CausalLm, 0, 0.02);
        let build = || {
            crate::causal_lm_from_map(
                &cfg,
                &map,
                std::path::Path::new("x"),
                &device,
                crate::Strictness::Strict,
            )
            .unwrap()
        };
        let (a, b) = (build(), build());
        let mut ca = Collect(Vec::new());
        let mut cb = Collect(Vec::new());
        a.visit(&mut ca);
        b.visit(&mut cb);
        assert_eq!(ca.0, cb.0);
        let mut sorted = ca.0.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ca.0.len(), "ids are distinct");
    }
}
