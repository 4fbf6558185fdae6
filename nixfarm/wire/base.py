"""The base of every wire model (unknown fields are refused, never dropped), and the
value types the protocols share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: The largest number a database column of nixfarm holds (PostgreSQL's ``integer``).
MAX_INT = 2**31 - 1
#: The id of a job, a job group, a token or a runner. Outside ``1..MAX_INT`` no row has
#: it: such a number is refused as bad input before any query is made (PostgreSQL
#: would refuse it with an error, not an empty answer).
Id = Annotated[int, Field(ge=1, le=MAX_INT)]
#: A number stored as it is (a priority, an exit status, a file mode, a sequence number).
Int32 = Annotated[int, Field(ge=-MAX_INT - 1, le=MAX_INT)]
