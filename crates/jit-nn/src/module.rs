//! The `Module` trait and state dicts.
//!
//! A module is a plain struct that holds its parameters (values with
//! `requires_grad_(true)`) and buffers (running statistics) and computes `forward`.
//! Names follow PyTorch: a module's own tensors have local names (`weight`, `bias`,
//! `running_mean`), children are prefixed with their name (`features.0.weight`), so
//! a PyTorch state dict loads by name.

use crate::safetensors_io;
use jit_core::{Error, Result, Var};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// A layer or a network.
pub trait Module: Send + Sync {
    /// The computation.
    fn forward(&self, x: &Var) -> Result<Var>;

    /// PyTorch's class name (for printing and messages).
    fn type_name(&self) -> &'static str;

    /// This module's own parameters, with local names.
    fn own_params(&self) -> Vec<(String, Var)> {
        vec![]
    }

    /// This module's own buffers (running statistics), with local names.
    fn own_buffers(&self) -> Vec<(String, Var)> {
        vec![]
    }

    /// Direct children with their names (`"0"`, `"features"`).
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![]
    }

    /// Switches this module (not its children) between training and evaluation.
    fn set_own_training(&self, _on: bool) {}
}

/// Extension methods for every module.
pub trait ModuleExt: Module {
    /// Every parameter of this module and its descendants, with dotted names, in
    /// registration order (PyTorch's `named_parameters`).
    fn named_parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        walk(self.as_dyn(), "", &mut |prefix, m| {
            out.extend(m.own_params().into_iter().map(|(n, v)| (format!("{prefix}{n}"), v)));
        });
        out
    }

    /// Every buffer, with dotted names (PyTorch's `named_buffers`).
    fn named_buffers(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        walk(self.as_dyn(), "", &mut |prefix, m| {
            out.extend(m.own_buffers().into_iter().map(|(n, v)| (format!("{prefix}{n}"), v)));
        });
        out
    }

    /// The parameters only, for an optimizer.
    fn parameters(&self) -> Vec<Var> {
        self.named_parameters().into_iter().map(|(_, v)| v).collect()
    }

    /// Parameters and buffers by name (PyTorch's `state_dict`).
    fn state_dict(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        walk(self.as_dyn(), "", &mut |prefix, m| {
            out.extend(m.own_params().into_iter().map(|(n, v)| (format!("{prefix}{n}"), v)));
            out.extend(m.own_buffers().into_iter().map(|(n, v)| (format!("{prefix}{n}"), v)));
        });
        out
    }

    /// Training mode (dropout active, batch statistics) for this module and every
    /// descendant.
    fn train(&self) {
        walk(self.as_dyn(), "", &mut |_, m| m.set_own_training(true));
    }

    /// Evaluation mode for this module and every descendant.
    fn eval(&self) {
        walk(self.as_dyn(), "", &mut |_, m| m.set_own_training(false));
    }

    /// Loads `dict` by name into the parameters and buffers (values are replaced in
    /// place, cast to each target's dtype). With `strict`, any missing, unexpected
    /// or shape-mismatched key is an error listing all of them and nothing is
    /// loaded; otherwise the matching keys load and the report lists the rest.
    fn load_state_dict(&self, dict: &[(String, Var)], strict: bool) -> Result<LoadReport> {
        let targets: BTreeMap<String, Var> = self.state_dict().into_iter().collect();
        let given: HashMap<&str, &Var> = dict.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut report = LoadReport::default();
        let mut plan = Vec::new();
        for (name, target) in &targets {
            match given.get(name.as_str()) {
                None => report.missing.push(name.clone()),
                Some(v) if v.shape() != target.shape() => {
                    report.mismatched.push((name.clone(), v.shape().to_vec(), target.shape().to_vec()))
                }
                Some(v) => plan.push((target.clone(), (*v).clone())),
            }
        }
        let mut unexpected: Vec<String> =
            given.keys().filter(|k| !targets.contains_key(**k)).map(|k| k.to_string()).collect();
        unexpected.sort();
        report.unexpected = unexpected;
        if strict && !report.is_clean() {
            return Err(Error::argument("load_state_dict", format!("{} (nothing was loaded)", report.describe())));
        }
        jit_core::no_grad(|| -> Result<()> {
            for (target, v) in &plan {
                target.assign(&v.cast(target.dtype()))?;
            }
            Ok(())
        })?;
        report.loaded = plan.len();
        Ok(report)
    }

    /// Saves the state dict as `.safetensors` (atomically).
    fn save_safetensors(&self, path: &Path) -> Result<()> {
        safetensors_io::save(path, &self.state_dict(), HashMap::new())
    }

    /// Loads a `.safetensors` state dict, after renaming its keys with `rename`
    /// (return `None` to drop a key): the hook for checkpoints whose names differ.
    fn load_safetensors(
        &self,
        path: &Path,
        strict: bool,
        rename: &dyn Fn(&str) -> Option<String>,
    ) -> Result<LoadReport> {
        let (tensors, _) = safetensors_io::load(path)?;
        let dict: Vec<(String, Var)> = tensors.into_iter().filter_map(|(k, v)| rename(&k).map(|k| (k, v))).collect();
        self.load_state_dict(&dict, strict).map_err(|e| match e {
            Error::Argument { msg, .. } => Error::file(path, msg),
            e => e,
        })
    }

    /// Loads a PyTorch `.pth` checkpoint (see [`crate::pth`]), after renaming its
    /// dotted keys with `rename` (a nested `{'state_dict': ..}` gives keys starting
    /// with `state_dict.`; strip that prefix here).
    fn load_pth(&self, path: &Path, strict: bool, rename: &dyn Fn(&str) -> Option<String>) -> Result<LoadReport> {
        let dict: Vec<(String, Var)> =
            crate::pth::load(path)?.into_iter().filter_map(|(k, v)| rename(&k).map(|k| (k, v))).collect();
        self.load_state_dict(&dict, strict).map_err(|e| match e {
            Error::Argument { msg, .. } => Error::file(path, msg),
            e => e,
        })
    }

    /// `self` as a trait object.
    fn as_dyn(&self) -> &dyn Module;
}

impl<T: Module> ModuleExt for T {
    fn as_dyn(&self) -> &dyn Module {
        self
    }
}

impl ModuleExt for dyn Module {
    fn as_dyn(&self) -> &dyn Module {
        self
    }
}

fn walk(m: &dyn Module, prefix: &str, f: &mut dyn FnMut(&str, &dyn Module)) {
    f(prefix, m);
    for (name, child) in m.children() {
        walk(child, &format!("{prefix}{name}."), f);
    }
}

/// What [`ModuleExt::load_state_dict`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Keys the module has and the dict lacks.
    pub missing: Vec<String>,
    /// Keys the dict has and the module lacks.
    pub unexpected: Vec<String>,
    /// `(key, shape in the dict, shape in the module)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Number of values loaded.
    pub loaded: usize,
}

impl LoadReport {
    /// True when every key matched.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// One line per problem kind, as PyTorch words them.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", self.unexpected.join(", ")));
        }
        for (k, got, want) in &self.mismatched {
            parts.push(format!("size mismatch for {k}: the checkpoint has shape {got:?}, the module {want:?}"));
        }
        if parts.is_empty() {
            "all keys matched".into()
        } else {
            parts.join("; ")
        }
    }
}

/// A training flag for modules that behave differently in training.
#[derive(Debug)]
pub struct TrainingFlag(AtomicBool);

impl Default for TrainingFlag {
    fn default() -> Self {
        TrainingFlag(AtomicBool::new(true))
    }
}

impl TrainingFlag {
    /// Current value (modules start in training mode, as in PyTorch).
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets it.
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }
}
