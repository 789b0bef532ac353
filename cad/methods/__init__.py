"""Method plugins (one module per method; see base.py). Each conf/method/<name>.yaml names its class by `_target_`."""

from cad.methods.base import (
    Method,
    MethodConfigError,
    MethodContext,
    MethodOutput,
    build_method,
)

__all__ = ["Method", "MethodConfigError", "MethodContext", "MethodOutput", "build_method"]
