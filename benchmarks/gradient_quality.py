"""Which attack gradient points where the expected loss rises, on a trained
midrun EBM: each defended attack of the config (BPDA+EOT, the full
gradient, the surrogate at each of `attack.surrogate_betas`, SPSA) against
central differences of the expected loss along every pixel
(`keras_ebm.defense.gradients.gradient_check`), on the first
`attack.gradient_check_images` test images, without running the attacks.

    python benchmarks/gradient_quality.py --workdir=runs/midrun/digits \
        --config.attack.surrogate=True \
        --config.attack.surrogate_betas='(5, 10, 20, 50)' \
        --config.attack.spsa=True --config.attack.gradient_check_images=4

Prints the table and writes `<workdir>/eval/gradient_quality.json`; the
check itself is cached under `<workdir>/eval/attack/` as in the report.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from keras_ebm import run  # noqa: E402
from keras_ebm.cli import parse  # noqa: E402


def main(argv):
    from keras_ebm.defense import outputs, plan, report
    from keras_ebm.regimes import midrun
    from keras_ebm.runs import training

    config, workdir = parse.resolved()
    config = run.run_config(config, workdir)
    if not config.attack.gradient_check_images:
        config.attack.gradient_check_images = 4
    model, _ = training.load_trained(config, workdir, midrun.build)
    classifier = midrun.classifier_of(config)
    images, labels = report.test_set(config)
    k_def = config.defense.num_steps
    defended = report.defended_classifier(config, model, classifier, k_def)
    planned = plan.defended_attacks(config, k_def)
    out = os.path.join(workdir, "eval", "attack")
    os.makedirs(out, exist_ok=True)
    check = report.gradient_check(config, defended, images, labels, planned, out)
    outputs.print_gradient_check(check)
    with open(os.path.join(workdir, "eval", "gradient_quality.json"), "w") as f:
        json.dump(check, f, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse.parse_flags)
