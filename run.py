"""Entry point: ``python run.py [overrides]`` / ``python run.py -m edit_lang=en,hi,ta``."""

import hydra
from omegaconf import DictConfig

from xling_edit.config import register_configs

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from xling_edit.pipeline import run

    run(cfg)


if __name__ == "__main__":
    main()
