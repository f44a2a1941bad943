"""User errors in the browser: a LoratuneError becomes the one-line message Gradio shows, never a traceback."""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from loratune.errors import LoratuneError


def shows_errors(fn):
    """Wrap an event handler (a function, or a generator that streams) so a mistake the user can fix pops up as
    one line. A generator stays a generator, so Gradio still streams what it yields."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except LoratuneError as e:
                raise gr.Error(str(e), print_exception=False) from None

        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoratuneError as e:
            raise gr.Error(str(e), print_exception=False) from None

    return wrapper
