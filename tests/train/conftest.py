"""A tiny training recipe over the synthetic data of tests/conftest.py."""


def recipe_args(run) -> list[str]:
    """The same run as command-line overrides, for a subprocess: every section, the model's overrides too."""
    args = [f"--preset={run.model['preset']}"]
    args += [f"model.{key}={value}" for key, value in run.model.items() if key != "preset"]
    for section in ("data", "optim", "train", "checkpoint", "parallel"):
        for key, value in vars(getattr(run, section)).items():
            if value is not None:
                args.append(f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}")
    return args
