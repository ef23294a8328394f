"""Which driver errors mean "the server or connection is gone" (tenantkit.db.failures)."""

from __future__ import annotations

import sqlite3

import pymysql
import pytest
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect

from tenantkit.db.failures import (
    CONNECTION_LOST,
    NOT_SENT,
    describe,
    error_code,
    is_connection_error,
)

MYSQL = create_engine("mysql+pymysql://app:pw@127.0.0.1/app").dialect
TENANTKIT = create_engine("mysql+tenantkit://app:pw@127.0.0.1/app").dialect
SQLITE = create_engine("sqlite://").dialect
Op = pymysql.err.OperationalError


@pytest.mark.parametrize("exc, dead", [
    pytest.param(Op(2003, "Can't connect to MySQL server"), True, id="refused"),
    pytest.param(Op(2002, "Can't connect through socket"), True, id="no socket"),
    pytest.param(Op(1053, "Server shutdown in progress"), True, id="shutting down"),
    pytest.param(Op(2006, "MySQL server has gone away"), True, id="gone away"),
    pytest.param(Op(2013, "Lost connection during query"), True, id="lost"),
    pytest.param(Op(1927, "Connection was killed"), True, id="killed"),
    pytest.param(Op(4031, "disconnected by the server"), True, id="idle timeout"),
    pytest.param(pymysql.err.InterfaceError(0, ""), True, id="closed connection"),
    pytest.param(ConnectionResetError(104, "reset"), True, id="socket error"),
    pytest.param(EOFError(), True, id="eof"),
    pytest.param(pymysql.err.ProgrammingError(1064, "syntax"), False, id="syntax"),
    pytest.param(Op(1290, "--read-only"), False, id="read-only replica"),
    pytest.param(Op(1205, "Lock wait timeout"), False, id="lock wait"),
    pytest.param(pymysql.err.IntegrityError(1062, "Duplicate"), False, id="duplicate"),
    pytest.param(Op(), False, id="no args"),
    pytest.param(ValueError("x"), False, id="not a driver error"),
])
@pytest.mark.parametrize("dialect", [MYSQL, TENANTKIT], ids=["pymysql", "tenantkit"])
def test_mysql_errors(exc: BaseException, dead: bool, dialect: Dialect) -> None:
    assert is_connection_error(exc, dialect) is dead


def test_a_wrapped_error_is_judged_by_the_error_it_wraps() -> None:
    refused = sa_exc.OperationalError("connect", None, Op(2003, "refused"))
    syntax = sa_exc.ProgrammingError("SELEC", None, pymysql.err.ProgrammingError(1064, "x"))
    assert is_connection_error(refused, MYSQL)
    assert not is_connection_error(syntax, MYSQL)
    assert error_code(refused) == 2003
    assert describe(refused) == "OperationalError: (2003, 'refused')"


@pytest.mark.parametrize("exc, dead", [
    pytest.param(sqlite3.ProgrammingError("Cannot operate on a closed database."), True,
                 id="closed"),
    pytest.param(sqlite3.OperationalError("no such table: t"), False, id="no table"),
])
def test_sqlite_errors(exc: BaseException, dead: bool) -> None:
    assert is_connection_error(exc, SQLITE) is dead


def test_not_sent_are_the_errors_before_a_statement_leaves() -> None:
    assert frozenset({2002, 2003, 2006}) == NOT_SENT


@pytest.mark.parametrize("code", sorted(CONNECTION_LOST))
def test_every_connection_lost_code_is_a_connection_error_as_sqlalchemy_says(code: int) -> None:
    # One list (CONNECTION_LOST, generated into the PHP drop-in too), and SQLAlchemy agrees.
    assert MYSQL.is_disconnect(Op(code, "lost"), None, None)
    assert is_connection_error(Op(code, "lost"), MYSQL)
    assert is_connection_error(Op(code, "lost"), SQLITE)  # decided by the list itself
