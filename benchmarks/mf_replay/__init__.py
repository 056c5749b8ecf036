"""Multi-fidelity search on recorded learning curves: vlsweep's MO-ASHA against its peers.

Replays sweeps over ``benchmarks/data/learning_curves.jsonl`` (written by
``learning_curves.py``: every evaluation of random configs of the demo, every 20 of its
200 steps) the way tabular HPO benchmarks do: a method proposes a point of the demo's
search space, the nearest recorded config (1-NN in the normalized space: log scale for
log-scaled parameters) stands in for it, and its recorded curve is what the trial
reports. Time is training steps; 2 trials run at once (``--workers``) and report in the
order their steps dictate, so the schedulers see results asynchronously, as on Ray.
Every method gets the same budget: the training steps full-budget TPE spends on
``--budget-trials`` trials.

Methods (each over the same seeds):

- ``tpe-full``: every trial runs 200 steps; TPE (vlsweep's default sampler) is told
  each trial's final values;
- ``mo-asha-random`` / ``mo-asha-tpe``: vlsweep's ``MOASHAScheduler`` stops trials at
  the rungs; proposals random, or TPE told PRUNED for a stopped trial;
- ``mo-asha-rung-tpe``: the same with what a sweep does by default
  (``search.learn_from_rungs``): TPE sees the trials at the highest rung that has enough
  of them (``vlsweep.search.sampling.at_highest_rung``);
- ``mo-asha-losses``: a candidate measured here, not a sweep option: rung-TPE with the
  rungs from 10% of the steps (20, 60, 180) ranked by each task's validation loss;
- ``optunahub-multimetric``: Optuna's TPE with OptunaHub's ``MultiMetricPruner``
  (Pareto rank per step, ``joint=True``) over Optuna's ``SuccessiveHalvingPruner`` with
  the same rungs; loaded from a local copy of the registry (``--optunahub-registry``:
  a checkout of github.com/optuna/optunahub-registry), never from the network; left out
  when none is given;
- ``syne-tune-moasha``: Syne Tune's ``MOASHA`` (random proposals, non-dominated
  sorting) driven through its own scheduler API (suggest / on_trial_add /
  on_trial_result / on_trial_complete), on (cer, 1 - iou); ``syne-tune-moasha-ranked``:
  the same with its priority given as its contract states (``ranked_priority``: the
  default one returns a sort order where a priority per trial is expected);
- ``ray-asha-scalarized``: Ray Tune's ``ASHAScheduler`` on (1 - cer) * iou with Ray's
  random search, under real Ray Tune (a local Ray with ``--workers`` CPUs): the
  trainable replays the nearest config's curve, 1 ms of sleep per step, and a callback
  counts the steps every trial reported.

Score: hypervolume (``vlsweep.pareto``) of the full-budget trials' front against cer = 1,
iou = 0, as a function of training steps spent. Per seed, ``steps_to_95pct`` is the steps
a method spent when its hypervolume first reached 95% of full-budget TPE's final
hypervolume on that seed, divided by TPE's total steps (infinite if never); the median
over seeds is reported (null when infinite).

    python benchmarks/mf_replay [--seeds 10] [--budget-trials 48] [--workers 2]
        [--optunahub-registry DIR] [--json docs/benchmarks/mf_replay.json]
        [--png docs/benchmarks/mf_replay.png] [--quick]

The parts: ``table`` (the recorded curves, nearest-config lookup), ``simulator`` (the
replayed sweep and its hypervolume), ``methods`` (every method by name, vlsweep's own),
``peers`` (OptunaHub, Syne Tune, Ray Tune), ``score`` (the figures and the verdict),
``report`` (the docs' table, the plot), ``__main__`` (the command line).
"""
