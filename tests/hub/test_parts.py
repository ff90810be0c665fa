"""The engine's parts stand on their own: a Mailroom with an Outbox, a store and the
sessions it is given, and nothing else of the engine."""

from __future__ import annotations

from csce513msg.hub import Lane, Submit, Write
from csce513msg.hub.config import HubConfig
from csce513msg.hub.delivery import Mailroom
from csce513msg.hub.outbox import Outbox
from csce513msg.hub.session import Session, State
from csce513msg.protocol import FrameDecoder, Receipt, ReceiptState, decode
from csce513msg.store import Account, MemoryStore, NewMessage


def test_a_mailroom_alone_stores_and_answers_with_a_receipt() -> None:
    store = MemoryStore([Account("ann", "student", "x"), Account("ben", "student", "x")])
    out = Outbox()
    ann = Session(1, "10.0.0.1:1", FrameDecoder(4096), 0.0, 0.0, 10.0, 0.0, state=State.READY, user="ann")
    mail = Mailroom(store, HubConfig(), {1: ann}, {"ann": (ann,)}, out, lambda session, user: True)
    new = NewMessage("dm:ann,ben", ("ann", "ben"), "ann", "", 0, 1, "ben", 0, 1_000_000, b"hi")
    mail.store_message(ann, new, rid=7)
    mail.flush(now=0.0)
    (submit,) = out.take()
    assert isinstance(submit, Submit) and submit.lane is Lane.LOOP  # the memory store never waits: the loop runs it
    mail.batch_done(submit.job_id, submit.job())
    (write,) = out.take()
    assert isinstance(write, Write) and write.conn == 1
    receipt = decode(next(iter(FrameDecoder(4096).feed(write.data))))
    assert isinstance(receipt, Receipt) and receipt.request_id == 7 and receipt.state == ReceiptState.STORED
    assert receipt.detail == "ben is offline"
