"""Checks gin bindings against the annotated types of the configurables they bind, before anything runs.

gin passes any parsed Python literal through: `train.steps = 2.5` would run
2.5 steps' worth of loop arithmetic, `DataConfig.batch_size = '8'` fails deep
inside with an unrelated TypeError. `check_bindings` compares every bound
value with its parameter's annotation and names the binding that does not fit.

What is checked: int (a bool or a float is refused; an integral float is
not an int either), float (an int is accepted), bool, str, None, unions and
optionals of these, tuple[X, ...] / tuple[X, Y] / Sequence[X] / list[X]
(a tuple or list whose items fit), dict/Mapping (any mapping). Annotations
it cannot read, classes, callables and gin references (`@name`, `%MACRO`)
are not checked.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

import gin

from embed_jax.errors import UserError

_UNCHECKED = object()  # An annotation this module does not judge.


class GinTypeError(UserError):
  """A gin binding whose value does not have its parameter's annotated type."""


def _is_reference(value: Any) -> bool:
  return isinstance(value, gin.config.ConfigurableReference) or "Reference" in type(value).__name__


def _fits(value: Any, annotation: Any) -> bool | object:
  """True/False when `value` does/does not fit `annotation`; _UNCHECKED when it cannot tell."""
  if annotation is Any or annotation is inspect.Parameter.empty:
    return _UNCHECKED
  if _is_reference(value):
    return _UNCHECKED
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType):
    verdicts = [_fits(value, a) for a in args]
    if any(v is True for v in verdicts):
      return True
    return _UNCHECKED if any(v is _UNCHECKED for v in verdicts) else False
  if annotation is type(None) or annotation is None:
    return value is None
  if annotation is bool:
    return isinstance(value, bool)
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if annotation is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if annotation is str:
    return isinstance(value, str)
  if origin is tuple or origin in (list, collections.abc.Sequence):
    if not isinstance(value, (tuple, list)):
      return False
    if origin is tuple and args and args[-1] is not Ellipsis:
      if len(args) != len(value):
        return False
      verdicts = [_fits(v, a) for v, a in zip(value, args)]
    else:
      item = args[0] if args else Any
      verdicts = [_fits(v, item) for v in value]
    if any(v is False for v in verdicts):
      return False
    return True
  if annotation in (tuple, list):
    return isinstance(value, (tuple, list))
  if origin in (dict, collections.abc.Mapping) or annotation in (dict, collections.abc.Mapping):
    return isinstance(value, dict)
  return _UNCHECKED


def _describe(annotation: Any) -> str:
  text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
  return text or str(annotation).replace("typing.", "")


def _signature_types(fn: Any) -> dict[str, Any]:
  """Parameter name -> annotation (evaluated) of a configurable function or class."""
  targets = (fn.__init__, fn) if inspect.isclass(fn) else (fn,)
  for target in targets:
    try:
      hints = typing.get_type_hints(target)
    except Exception:  # pylint: disable=broad-except  # Unresolvable annotations: try the next.
      continue
    if hints:
      return {k: v for k, v in hints.items() if k != "return"}
  return {}


def check_bindings() -> None:
  """Raises GinTypeError for the first bound value that does not fit its parameter's annotation."""
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    configurable = registry.get_match(selector)
    if configurable is None:
      continue
    hints = _signature_types(configurable.wrapped)
    for name, value in params.items():
      if name not in hints or _fits(value, hints[name]) is not False:
        continue
      where = f"{scope}/{configurable.name}" if scope else configurable.name
      raise GinTypeError(
          f"gin binding {where}.{name} = {value!r}: expected {_describe(hints[name])}, "
          f"got {type(value).__name__}")
