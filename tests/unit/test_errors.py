"""The error tree: every class maps to an errno; messages are one line."""

from __future__ import annotations

import errno
import inspect

import modelfs.errors as errors_module
from modelfs.errors import (
    ERRNO,
    CacheFull,
    DigestMismatch,
    ModelfsError,
    ModelNotFound,
    NameInvalid,
    Transient,
    Unauthorized,
    errno_for,
)


def test_every_error_class_has_an_errno_row():
    classes = [
        c
        for _, c in inspect.getmembers(errors_module, inspect.isclass)
        if issubclass(c, ModelfsError)
    ]
    missing = [c.__name__ for c in classes if c not in ERRNO]
    assert not missing, f"error classes without an errno row: {missing}"


def test_the_table_says_what_users_see():
    assert errno_for(ModelNotFound("x")) == errno.ENOENT
    assert errno_for(NameInvalid("x", "y")) == errno.ENOENT
    assert errno_for(DigestMismatch("x")) == errno.EIO
    assert errno_for(Transient("x")) == errno.EIO
    assert errno_for(CacheFull("x")) == errno.ENOSPC
    assert errno_for(Unauthorized("x", 401)) == errno.EACCES


def test_subclass_without_row_uses_nearest_parent():
    class Special(Transient):
        pass

    assert errno_for(Special("x")) == errno.EIO


def test_name_invalid_message_form():
    assert str(NameInvalid("a b", "it has a space")) == 'invalid model name "a b": it has a space'
