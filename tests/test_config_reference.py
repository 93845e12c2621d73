"""docs/configuration.md is generated from the config models and must match them."""


from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.config import ServeConfig, TrainConfig, describe_fields
from lmforge.stage_reference import render_reference
from lmforge.stages import STAGES

REFERENCE = REPO / "docs" / "configuration.md"


def test_committed_reference_is_up_to_date():
    assert REFERENCE.read_text(encoding="utf-8") == render_reference(), (
        "docs/configuration.md is stale: run `python -m lmforge.stage_reference > docs/configuration.md`")


def test_reference_lists_every_stage_and_every_setting():
    reference = render_reference()
    for name, stage in STAGES.items():
        assert (f"| `{name}` | [{stage.config.__name__}]" in reference
                and f"\n## {stage.config.__name__}\n" in reference)
    assert "| `zero.offload_optimizer` | `bool` | `false` |" in reference
    assert "| `model.architecture` | `\"llama\" \\| \"qwen2\" \\| \"bloom\" \\| null` | `null` |" in reference
    assert "### `sources` items: SourceConfig" in reference  # list settings document their items
    assert all(f"| `{line.split()[0]}` |" in reference for line in describe_fields(TrainConfig))


def test_nested_defaults_are_the_owners():
    # ServeConfig's ray section defaults to RayConfig(num_cpus=8), not RayConfig's own num_cpus=None
    assert ("  ray.num_cpus = 8  Logical CPUs of a local Ray (ignored when joining)."
            in describe_fields(ServeConfig))
    assert "| `ray.num_cpus` | `int \\| null` | `8` |" in render_reference().split("## ServeConfig")[1]
