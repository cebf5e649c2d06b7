"""Which launch arguments become node parameters (used by launch/detect.launch.py).

A launch file that always passes its arguments after the user's parameters file replaces every
value in that file with the argument's default (later parameter sources win in ROS 2). So the
detector's overridable arguments default to '' ("not given") and only the ones the user gave on
the command line are passed, typed, after the file.
"""
from typing import Dict, Mapping, Union

# Launch argument -> type of the node parameter it overrides.
OVERRIDABLE = {'model_path': str, 'device': str, 'scoring': str, 'threshold': float,
               'use_sim_time': bool}


def _typed(name: str, text: str, kind) -> Union[str, float, bool]:
    if kind is bool:
        if text.lower() not in ('true', 'false'):
            raise ValueError(f'launch argument {name}:={text!r}: expected true or false')
        return text.lower() == 'true'
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f'launch argument {name}:={text!r}: expected a number') from None
    return text


def parameter_overrides(given: Mapping[str, str]) -> Dict[str, Union[str, float, bool]]:
    """{argument: text as launched} -> {parameter: typed value} for the arguments that were
    given (non-empty); the others keep the parameters file's (or the node's default) value."""
    return {name: _typed(name, text, OVERRIDABLE[name]) for name, text in given.items()
            if name in OVERRIDABLE and text != ''}
