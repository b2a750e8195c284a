"""The preparation as an Apache Beam pipeline: one program for one machine (DirectRunner, its
workers in several processes) and for Dataflow, Flink or Spark (Beam's own options).

    input shards not yet prepared  (Create)
      -> their items               (FlatMap read_shard; a marker per shard)
      -> spread over workers       (Reshuffle)
      -> examples or skips         (FlatMap examples_of: decode once, window, JPEG)
      -> grouped by shard          (GroupByKey)
      -> shard files               (Map write_shard: records atomically, then its stats)

then, once the pipeline has finished, the launcher reads every shard's stats and writes
`captions.txt`, `report.json` and `dataset.json` (`finish`). A shard is finished when
`stats/{shard}.json` exists; a rerun prepares only the others.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from absl import logging

from phenaki_jax import storage
from phenaki_jax.data import records
from phenaki_jax.data.prepare import examples as ex
from phenaki_jax.data.prepare import formats
from phenaki_jax.data.prepare.formats import InputShard, PrepareError, Skip
from phenaki_jax.data.stderr import captured_stderr

STATS_DIR, CAPTIONS_DIR, CAPTIONS_FILE = "stats", "captions", "captions.txt"
SETTINGS_FILE = "settings.json"
_MARKER = "__shard__"
_WARNING = "phenaki-prepare: shard"


def stats_path(output: str, shard: str) -> str:
    return storage.join(output, STATS_DIR, f"{shard}.json")


def _items(shard: InputShard) -> Iterable[tuple[str, Any]]:
    yield shard.name, _MARKER  # every shard reaches write_shard, even with nothing kept
    for item in formats.read_shard(shard):
        yield shard.name, item


def _examples(element: tuple[str, Any], settings: ex.Settings) -> Iterable[tuple[str, Any]]:
    name, item = element
    if isinstance(item, (str, Skip)):
        yield name, item
        return
    for outcome in ex.examples_of(item, settings):
        yield name, outcome


def write_shard(element: tuple[str, Iterable[Any]], output: str) -> dict[str, Any]:
    """Writes one shard's record files (atomically, sorted by key), its captions, and last
    its stats; logs one warning per skip reason. Returns the stats."""
    name, outcomes = element
    kept: dict[str, list[ex.Kept]] = collections.defaultdict(list)
    skipped: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    seconds = cpu = 0.0
    for outcome in outcomes:
        if isinstance(outcome, ex.Kept):
            kept[outcome.split].append(outcome)
        elif isinstance(outcome, Skip):
            skipped[outcome.reason] += outcome.count
            example.setdefault(outcome.reason, outcome.detail)
        elif isinstance(outcome, ex.Decoded):
            seconds += outcome.seconds
            cpu += outcome.cpu_seconds
    files, counts, captions = {}, {}, set()
    for split, rows in sorted(kept.items()):
        rows.sort(key=lambda k: k.key)
        path = f"{split}-{name}{records.RECORD_SUFFIX}"
        records.write_records(storage.join(output, path), [k.record for k in rows])
        files[split] = {"path": path, "records": len(rows)}
        counts[split] = dict(collections.Counter(k.kind for k in rows))
        captions.update(k.caption.replace("\n", " ") for k in rows)
    storage.write_text(storage.join(output, CAPTIONS_DIR, f"{name}.txt"),
                       "".join(f"{c}\n" for c in sorted(captions)))
    for reason, n in sorted(skipped.items()):
        logging.warning("phenaki-prepare: shard %s: skipped %d (%s), e.g. %s", name, n, reason,
                        example[reason])
    stats = {"shard": name, "files": files, "kept": counts, "skipped": dict(skipped),
             "source_seconds": seconds, "decode_cpu_seconds": cpu}
    storage.write_text(stats_path(output, name), json.dumps(stats, indent=1))
    return stats


def finish(output: str, shards: Sequence[str], prepared_now: Sequence[str],
           settings: ex.Settings, source: str, unfinished: Sequence[str], began: float) -> dict:
    """report.json, captions.txt and dataset.json of the input's `shards` (all finished:
    `prepared_now` by this run, the others by earlier ones)."""
    every = [json.loads(storage.read_text(stats_path(output, name))) for name in shards]
    this_run = [s for s in every if s["shard"] in set(prepared_now)]
    splits: dict[str, dict[str, Any]] = {}
    kept: collections.Counter[str] = collections.Counter()
    skipped: collections.Counter[str] = collections.Counter()
    for stats in every:
        for split, f in stats["files"].items():
            entry = splits.setdefault(split, {"files": [], "records": 0,
                                              "kinds": collections.Counter()})
            entry["files"].append(f)
            entry["records"] += f["records"]
            entry["kinds"].update(stats["kept"].get(split, {}))
            kept.update(stats["kept"].get(split, {}))
        skipped.update(stats["skipped"])
    if unfinished:
        skipped["unfinished_shard"] += len(unfinished)
        logging.warning("phenaki-prepare: skipped %d unfinished input shards (no _stats.json): "
                        "%s", len(unfinished), ", ".join(unfinished[:5]))
    seconds = sum(s["source_seconds"] for s in this_run)
    cpu = sum(s["decode_cpu_seconds"] for s in this_run)
    report = {"kept": {k: kept.get(k, 0) for k in ex.KINDS}, "skipped": dict(skipped),
              "shards": {"prepared": len(this_run),
                         "already_finished": len(every) - len(this_run),
                         "unfinished_input": len(unfinished)},
              "this_run": {"source_seconds": round(seconds, 3),
                           "decode_cpu_seconds": round(cpu, 3),
                           "wall_seconds": round(time.time() - began, 3)}}
    storage.write_text(storage.join(output, records.REPORT_FILE), json.dumps(report, indent=1))
    if not sum(kept.values()):
        raise PrepareError(f"--input={source}: nothing usable (skipped: "
                           f"{dict(skipped) or 'no samples found'})")
    captions: set[str] = set()
    for stats in every:
        text = storage.read_text(storage.join(output, CAPTIONS_DIR, f"{stats['shard']}.txt"))
        captions.update(line for line in text.split("\n") if line)
    storage.write_text(storage.join(output, CAPTIONS_FILE),
                       "".join(f"{c}\n" for c in sorted(captions)))
    for entry in splits.values():
        entry["kinds"] = dict(entry["kinds"])
    dataset = {"format": records.FORMAT, "source": source, "resolution": settings.resolution,
               "num_frames": settings.num_frames, "fps": settings.fps,
               "context_frames": settings.context_frames, "stride": settings.stride,
               "validation_fraction": settings.validation_fraction,
               "jpeg_quality": settings.jpeg_quality, "shards": len(every),
               "splits": splits, "captions": CAPTIONS_FILE}
    storage.write_text(storage.join(output, records.DATASET_FILE), json.dumps(dataset, indent=1))
    return report


def check_output(output: str, source: str, settings: ex.Settings) -> None:
    """Before any work: the output directory must be writable, and a directory prepared
    before (its finished shards are kept) must have been prepared from the same input with
    the same settings (`SETTINGS_FILE`, written here on the first run)."""
    path = storage.join(output, SETTINGS_FILE)
    want = {"source": source, **dataclasses.asdict(settings)}
    try:
        storage.makedirs(storage.join(output, STATS_DIR))
        if not storage.isfile(path):
            storage.write_text(path, json.dumps(want, indent=1))
            return
        have = json.loads(storage.read_text(path))
    except (OSError, storage.StorageError) as e:
        raise PrepareError(f"--output={output} is not writable: {e}") from e
    changed = sorted(k for k in want if have.get(k) != want[k])
    if changed:
        k = changed[0]
        raise PrepareError(f"--output={output} was prepared with {k}={have.get(k)!r}, not "
                           f"{want[k]!r}; use another --output (its finished shards are kept "
                           "on a rerun)")


def _local_runner(options: Any) -> Any:
    """The DirectRunner's portable engine with the pipeline's options (as the DirectRunner
    builds it, which would first try to download the Prism runner)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def run(source: str, output: str, settings: ex.Settings, rows_per_shard: int,
        beam_args: Sequence[str]) -> dict[str, Any]:
    """Prepares `source` into `output` with Beam; returns the report."""
    began = time.time()
    check_output(output, source, settings)
    shards, unfinished = formats.plan(source, rows_per_shard)
    pending = [s for s in shards if not storage.isfile(stats_path(output, s.name))]
    if pending:
        # Beam and its worker processes narrate their start-up on standard error; what the
        # user needs from them is the per-shard skip warnings, shown once each afterwards.
        with captured_stderr() as captured:
            _run_beam(pending, output, settings, beam_args)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
        shown: set[str] = set()
        for line in text.splitlines():
            warning = line[line.find(_WARNING):] if _WARNING in line else None
            if warning and warning not in shown and "Worker:" not in line:
                shown.add(warning)
                sys.stderr.write(warning + "\n")
    return finish(output, [s.name for s in shards], [s.name for s in pending], settings, source,
                  unfinished, began)


def _run_beam(pending: Sequence[InputShard], output: str, settings: ex.Settings,
              beam_args: Sequence[str]) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    given = {a.split("=")[0] for a in beam_args}
    defaults = {"--default_sdk_harness_log_level": "WARNING"}
    if "--runner" not in given:
        # One machine: the DirectRunner's engine, one worker process per core.
        defaults.update({"--direct_running_mode": "multi_processing",
                         "--direct_num_workers": "0"})
    options = PipelineOptions([f"{k}={v}" for k, v in defaults.items() if k not in given]
                              + list(beam_args))
    # One machine runs Beam's portable engine (the DirectRunner's own, with its multi-process
    # mode) directly: the DirectRunner would first try to download the Prism runner.
    runner = None if "--runner" in given else _local_runner(options)
    with beam.Pipeline(runner=runner, options=options) as p:
        _ = (p
             | "Shards" >> beam.Create(list(pending))
             | "Items" >> beam.FlatMap(_items)
             | "Spread" >> beam.Reshuffle()
             | "Examples" >> beam.FlatMap(_examples, settings)
             | "ByShard" >> beam.GroupByKey()
             | "Write" >> beam.Map(write_shard, output))
