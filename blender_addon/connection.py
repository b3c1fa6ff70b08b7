"""The one connection to the backend, driven from a bpy.app.timers callback on Blender's main thread.

Why a timer and poll(0): Blender's data may only be touched from the main thread, and a blocking receive
would freeze the UI. Each tick drains whatever messages are waiting (never waiting for more), applies them to
the scene and the panel state, and returns the next interval. No thread is started. The socket is made with
LINGER 0 (by shared.protocol.Client), so closing it never blocks on unsent messages.

Lifecycle: the timer and socket exist only between `connect()` and `disconnect()`; disconnect runs on add-on
unregister and from a load_pre handler (a closed or replaced file), so neither outlives the add-on or the file.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable

import bpy

TICK_S = 0.1
# The panel says "backend lost" when nothing (not even a heartbeat) has come for this long.
LOST_AFTER_S = 2.5

# Exceptions caught inside the timer callback (also shown in the panel). Tests assert this stays empty.
timer_errors: list[str] = []

_session: Any = None  # the live Session, or None


def state(context: Any = None) -> Any:
    return (context or bpy.context).window_manager.tbsd_state


def session() -> Any:
    return _session


def timer_registered() -> bool:
    return bpy.app.timers.is_registered(_tick)


def _tick() -> float | None:
    """The timer callback. Never raises: an exception in a timer would unregister it and spam the console."""
    if _session is None:
        return None
    try:
        _session.tick(bpy.context)
    except Exception as exc:  # noqa: BLE001 - reported in the panel, the timer keeps running
        timer_errors.append(traceback.format_exc())
        try:
            state().last_error = f"Internal error: {type(exc).__name__}: {exc}"
        except Exception:  # noqa: BLE001 - no window manager (e.g. during file load): nothing to show on
            pass
    return TICK_S if _session is not None else None


def connect(make_session: Callable[[], Any]) -> Any:
    """Open a session (closing any previous one) and start the timer."""
    global _session
    disconnect()
    _session = make_session()
    if not timer_registered():
        # persistent=False: Blender drops the timer itself when another file is loaded.
        bpy.app.timers.register(_tick, first_interval=0.0, persistent=False)
    return _session


def disconnect() -> None:
    """Stop the timer and close the socket; safe to call at any time."""
    global _session
    if timer_registered():
        bpy.app.timers.unregister(_tick)
    current, _session = _session, None
    if current is not None:
        current.close()


@bpy.app.handlers.persistent
def _on_load_pre(*_args: Any) -> None:
    disconnect()


def register() -> None:
    timer_errors.clear()
    bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    disconnect()
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
