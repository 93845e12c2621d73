"""`lmforge <stage> CONFIG [key=value ...]`: one subcommand per stage, help text from the config models."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml

from lmforge.config import ConfigError, describe_fields, load_config
from lmforge.stages import STAGES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="lmforge: domain LLMs on Ray.")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        sub = stages.add_parser(
            name, help=stage.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
            description=f"{stage.summary}\n\nSettings (YAML keys; override with key=value):\n"
            + "\n".join(describe_fields(stage.config)),
        )
        _add_config_arguments(sub, "YAML config file", "pack.block_size=2048")
        sub.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_generate(stages)
    _add_plan(stages)
    _add_submit(stages)
    return parser


def _add_generate(stages) -> None:
    """`lmforge generate MODEL_DIR QUESTION`: no config file, so plain arguments."""
    sub = stages.add_parser(
        "generate", help="Ask a converted model one question (streamed with --engine hf).",
        description="Answer QUESTION with the model in MODEL_DIR, using its chat template; greedy, stops at "
        "the model's EOS. --engine hf streams tokens as they are produced; --engine vllm (vLLM on CPU) "
        "prints the whole answer when it is done.",
    )
    sub.add_argument("model_dir", help="output_dir of lmforge convert")
    sub.add_argument("question")
    sub.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    sub.add_argument("--max-new-tokens", type=int, default=256)


def _add_config_arguments(sub, config_help: str, override_example: str) -> None:
    """CONFIG [key=value ...], as every config-taking command reads them (load_config)."""
    sub.add_argument("config", help=config_help)
    sub.add_argument("overrides", nargs="*", metavar="key=value",
                     help=f"dotted overrides, e.g. {override_example}")


def _add_plan(stages) -> None:
    """`lmforge plan CONFIG [key=value ...]`: a training config, checked for memory instead of run."""
    sub = stages.add_parser(
        "plan", help="GPU and CPU memory per worker of a pretrain/sft/align config, and whether it fits.",
        description="Estimate per-worker GPU memory and CPU RAM of a pretrain/sft/align config under ZeRO-3 "
        "with and without offload (formulas: lmforge/train/plan.py), against plan.gpu_memory_gib / "
        "plan.cpu_memory_gib. Exit 0: it fits; 1: it does not; 2: it cannot be planned.",
    )
    _add_config_arguments(sub, "YAML config of lmforge pretrain, sft or align", "micro_batch_size=2")


def _add_submit(stages) -> None:
    """`lmforge submit STAGE CONFIG [key=value ...]`: the stage as a Ray job (lmforge/submit.py)."""
    sub = stages.add_parser(
        "submit", help="Run a stage or a pipeline as a Ray job, named and tagged for the dashboard.",
        description="Submit `python jobs/<STAGE>.py` with the resolved config (uploaded with this checkout "
        "as the job's working dir) to the Ray cluster at --address (default: RAY_ADDRESS), with metadata "
        "stage, config_sha256, config_path, run_name/output_dir; then print its logs until it ends. "
        "Exit 0 only when the job SUCCEEDED.",
    )
    sub.add_argument("job_stage", choices=list(STAGES), metavar="STAGE", help=", ".join(STAGES))
    _add_config_arguments(sub, "YAML config of the stage (anywhere: the resolved config is uploaded)",
                          "max_steps=100")
    sub.add_argument("--address",
                     help="Ray dashboard address, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    sub.add_argument("--no-wait", action="store_true", help="return once submitted; do not follow the logs")
    sub.add_argument("--entrypoint-num-cpus", type=float, default=0,
                     help="CPUs reserved for the job's driver "
                     "(default 0: drivers may run on a head with CPU 0)")
    sub.add_argument("--entrypoint-memory", type=int,
                     help="bytes of RAM reserved for the driver (convert: ~4x model)")
    sub.add_argument("--entrypoint-resources", type=_resources_json, metavar="JSON",
                     help='custom Ray resources the driver needs, e.g. \'{"big_memory": 1}\': it runs on '
                     "a node that has them (convert on a large-RAM node)")


def _resources_json(text: str) -> dict[str, float]:
    try:
        resources = json.loads(text)
        if isinstance(resources, dict) and all(isinstance(v, (int, float)) for v in resources.values()):
            return resources
    except json.JSONDecodeError:
        pass
    raise argparse.ArgumentTypeError(f"not a JSON object of resource amounts: {text}")


def _run_submit(args) -> int:
    from lmforge.submit import submit

    try:
        return submit(args.job_stage, args.config, args.overrides, address=args.address,
                      wait=not args.no_wait, entrypoint_num_cpus=args.entrypoint_num_cpus,
                      entrypoint_memory=args.entrypoint_memory,
                      entrypoint_resources=args.entrypoint_resources)
    except ConfigError as exc:
        print(f"lmforge submit: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"lmforge submit: {exc}", file=sys.stderr)
        return 1


def _run_plan(args) -> int:
    from lmforge.train.plan import load_plan_config, plan_report

    try:
        report, fits = plan_report(load_plan_config(args.config, args.overrides), args.config)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"lmforge plan: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0 if fits else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage == "plan":
        return _run_plan(args)
    if args.stage == "submit":
        return _run_submit(args)
    if args.stage == "generate":
        from lmforge.convert.generate import run_generate

        try:
            run_generate(args.model_dir, args.question, args.engine, args.max_new_tokens)
        except (ValueError, OSError) as exc:
            print(f"lmforge generate: {exc}", file=sys.stderr)
            return 1
        return 0
    stage = STAGES[args.stage]
    try:
        cfg = load_config(stage.config, args.config, args.overrides)
    except ConfigError as exc:
        print(f"lmforge {args.stage}: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.model_dump(), allow_unicode=True, sort_keys=False))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        manifest = stage.function()(cfg)
    except Exception as exc:  # a user error gets one line; anything else (a bug) keeps its traceback
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"lmforge {args.stage}: {message}", file=sys.stderr)
        return 1
    print(f"\nlmforge {args.stage}: done")
    for key, value in manifest.outputs.items():
        if isinstance(value, (str, int, float)):
            text = str(value)
            print(f"  {key}: "
                  f"{text if len(text) <= 160 else text[:100] + ' ... (manifest.json has it whole)'}")
    print(f"  counts: {json.dumps(manifest.counts.get('total', manifest.counts), ensure_ascii=False)}")
    return 0


def user_error_message(exc: BaseException) -> str | None:
    """The message of a bad input or config, also when a Ray task raised it; None for anything else (a bug).

    A Ray Data UDF's error arrives as a UserCodeException without the original: it keeps its traceback,
    which is why the data stages quarantine bad records instead of raising in a UDF."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError):  # a task's error, its remote traceback in the message
        exc = exc.cause
    if isinstance(exc, OSError) and exc.filename is None:  # names no path the user could fix: a bug
        return None
    return str(exc) if isinstance(exc, _USER_ERRORS) else None


_USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError, MemoryError)


def run_job(stage: str) -> None:
    """Entry point of `jobs/<stage>.py` under `ray job submit`: exits with the stage's status."""
    sys.exit(main([stage, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
