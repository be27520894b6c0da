//! The `local` executor: actions are computed in this process. Actions of a stage whose
//! body is sequential (factors) run in parallel on rayon's pool; the others one at a
//! time, each using every core inside.

use super::{Executor, Ran};
use crate::action::Action;
use crate::ctx::{Ctx, Miss, RanOn};
use crate::spec::ExecutorKind;
use crate::{stages, EngineError};
use rayon::prelude::*;
use std::time::Instant;

pub struct Local;

fn one(ctx: &Ctx, action: &Action, miss: &Miss) -> Result<Ran, EngineError> {
    let started = Instant::now();
    let entry = ctx.compute(action, miss)?;
    Ok(Ran {
        entry,
        on: RanOn {
            executor: "local".into(),
            host: ctx.host().to_string(),
            job: None,
            attempts: 1,
            seconds: Some(started.elapsed().as_secs_f64()),
        },
    })
}

impl Executor for Local {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Local
    }

    fn run(&mut self, ctx: &Ctx, todo: &[(Action, Miss)]) -> Result<Vec<Ran>, EngineError> {
        let parallel = |a: &Action| stages::def(&a.stage).is_some_and(|d| d.parallel);
        let mut out: Vec<Option<Ran>> = (0..todo.len()).map(|_| None).collect();
        for (i, (a, m)) in todo.iter().enumerate() {
            if !parallel(a) {
                out[i] = Some(one(ctx, a, m)?);
            }
        }
        let par: Vec<usize> = (0..todo.len()).filter(|&i| parallel(&todo[i].0)).collect();
        let done: Vec<(usize, Ran)> = par
            .par_iter()
            .map(|&i| one(ctx, &todo[i].0, &todo[i].1).map(|r| (i, r)))
            .collect::<Result<_, _>>()?;
        for (i, r) in done {
            out[i] = Some(r);
        }
        Ok(out.into_iter().flatten().collect())
    }
}
