"""Check fairseq2 config files against a real fairseq2 installation, without training anything.

Run it with the fairseq2 environment's interpreter (it imports fairseq2, which coral's environment must not)::

    python -c "from pathlib import Path; from finetuning.trainers.fairseq2 import PRESETS, render_config, write_config
    [write_config(render_config(p, Path('data')), Path(f'/tmp/fs2/{p}.yaml')) for p in PRESETS]"
    /work/venvs/fairseq2/bin/python finetuning/trainers/validate_fairseq2_config.py /tmp/fs2/*.yaml

For each file it does what ``fairseq2 lm <recipe> --config-file FILE`` does before training starts:
1. merge the file over the ``llama3_1_instruct`` preset with fairseq2's own ``ConfigReader`` (the CLI's code);
2. structure the result into the recipe's config dataclass and ``validate`` it (the recipe loader's first step);
3. structure and validate the sections that the recipe structures later by name: the criterion (DPO, ...),
   the optimizer and the learning-rate scheduler;
4. look up the model (and the DPO reference model) among fairseq2's asset cards.
It prints one JSON line per file and exits with 1 if any file fails. It needs no GPU, data or weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PRESET = "llama3_1_instruct"


def check(path: Path, context: Any) -> dict[str, Any]:
    """The parsed essentials of one config file; raises on the first problem fairseq2 would report."""
    import yaml
    from fairseq2.cli.commands.recipe import ConfigReader
    from fairseq2.optim import OptimizerHandler
    from fairseq2.optim.lr_scheduler import LRSchedulerHandler
    from fairseq2.recipes.lm import InstructionFinetuneConfig, POFinetuneConfig, POFinetuneUnitHandler
    from fairseq2.utils.structured import structure
    from fairseq2.utils.validation import validate
    from fairseq2.utils.yaml import StandardYamlLoader

    preference = "criterion" in (yaml.safe_load(path.read_text()) or {})
    kls = POFinetuneConfig if preference else InstructionFinetuneConfig
    files = context.file_system
    reader = ConfigReader(context.get_config_registry(kls), files, StandardYamlLoader(files))
    config = structure(reader.read(PRESET, [path], None), kls)
    validate(config)

    def nested(section: Any, registry: Any) -> Any:
        value = structure(section.config, context.get_registry(registry).get(section.name).config_kls)
        validate(value)
        return value

    optimizer = nested(config.optimizer, OptimizerHandler)
    scheduler = nested(config.lr_scheduler, LRSchedulerHandler)
    models = [config.model.name]
    summary: dict[str, Any] = {
        "file": str(path), "ok": True, "recipe": "preference_finetune" if preference else "instruction_finetune",
        "model": config.model.name, "dataset": {"path": str(config.dataset.path),
                                                "source_encode_mode": config.dataset.source_encode_mode},
        "lr": optimizer.lr, "scheduler": {"final_lr": scheduler.final_lr, "final_lr_scale": scheduler.final_lr_scale,
                                          "num_warmup_steps": scheduler.num_warmup_steps},
        "num_steps": config.regime.num_steps, "tensor_parallel_size": config.gang.tensor_parallel_size,
    }
    if preference:
        criterion = nested(config.criterion, POFinetuneUnitHandler)
        summary["criterion"] = {"name": config.criterion.name, "beta": criterion.beta,
                                "reference_model": criterion.reference_model.name}
        models.append(criterion.reference_model.name)
    for name in models:
        context.asset_store.retrieve_card(name)  # raises AssetCardNotFoundError for an unknown model
    return summary


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    # Run as a script, this folder is sys.path[0], and its fairseq2.py (coral's launcher) would shadow the library.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import fairseq2
    from fairseq2.context import get_runtime_context

    fairseq2.setup_fairseq2()
    context = get_runtime_context()
    failed = 0
    for arg in argv:
        try:
            print(json.dumps({**check(Path(arg), context), "fairseq2": fairseq2.__version__}))
        except Exception as exc:  # report every file, not just the first bad one
            failed += 1
            chain: list[str] = []
            cause: BaseException | None = exc
            while cause is not None:
                chain.append(f"{type(cause).__name__}: {cause}")
                cause = cause.__cause__
            print(json.dumps({"file": arg, "ok": False, "error": " <- ".join(chain)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
