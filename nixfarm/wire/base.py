"""The base of every wire model (unknown fields are refused, never dropped), and the
value types the protocols share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: The largest id a row can have: ids are signed 64-bit integers (PostgreSQL's bigint).
MAX_ID = 2**63 - 1
#: The id of a job, a job group, a token or a runner. Outside ``1..MAX_ID`` no row has
#: it: such a number is refused as bad input before any query is made.
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
