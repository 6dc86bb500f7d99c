from launchers.engines.base import ENGINES, Engine, EngineSpec, build, check_installed

__all__ = ["ENGINES", "Engine", "EngineSpec", "build", "check_installed"]
