"""A tiny training recipe over the synthetic data of tests/conftest.py."""


def recipe_args(run) -> list[str]:
    """The same run as command-line overrides, for a subprocess."""
    args = [f"--preset={run.model['preset']}"]
    for section in ("data", "optim", "train", "checkpoint"):
        for key, value in vars(getattr(run, section)).items():
            if value is not None:
                args.append(f"{section}.{key}={str(value).lower() if isinstance(value, bool) else value}")
    return args
