# One direction of a connection, as a state machine: how its stream ends.
#
# A direction carries the bytes one side (its source) sends to the other (its
# destination). Its state says how far the end of that stream has got; the table
# below is every way it moves, in one place. What the kernel reports (readable,
# writable, hup, fin), whether we listen for a source (muted) and where held bytes
# wait (piped, bulk) are facts beside the state, kept as flags; whether an urgent
# mark may be ahead of the reader is the side's small machine, UrgentMark, below.

cdef enum ChanState:
    CH_OPEN = 0         # the source may send more; its FIN, once read, is passed on
    CH_DRAINING = 1     # the source's FIN was read: held bytes go out, then the FIN
    CH_CUT = 2          # a side failed with no FIN first: what the source still has
                        # goes on until it ends, and no FIN is ever passed on
    CH_DONE = 3         # nothing more to do: the FIN passed on (or left to the close),
                        # or a cut source read to its end

cdef enum ChanEvent:
    CE_SOURCE_END = 0   # the source's end was read (a 0, or a short read after its FIN)
    CE_ALL_SENT = 1     # every byte held for the destination is out
    CE_CUT = 2          # a side failed, its FIN not first (conn_fail): no FIN this way
    CE_SOURCE_ERROR = 3 # reading the failed source errored: it has nothing more
    CE_RETRY = 4        # the target failed before a byte went: the next one gets this
                        # direction afresh (a FIN the client sent goes to it too)

cdef enum:
    DO_FIN = 16         # action bit of a CHAN_TABLE entry: shutdown(SHUT_WR) the destination
    CH_STATE_MASK = 15

# event x state -> next state | action. Columns: OPEN, DRAINING, CUT, DONE.
cdef uint8_t[5][4] CHAN_TABLE = [
    # CE_SOURCE_END: FIN read. Held bytes still go first (a FIN overtaking them
    # would truncate). A cut source reading to its end has nothing more: done.
    [CH_DRAINING, CH_DRAINING, CH_DONE, CH_DONE],
    # CE_ALL_SENT: only a draining direction acts: its FIN goes now, after every
    # byte before it. Open or cut, an empty channel just waits for more.
    [CH_OPEN, CH_DONE | DO_FIN, CH_CUT, CH_DONE],
    # CE_CUT: the peer must not take truncation for a clean end, so no FIN will
    # follow (it is reset at the end of the grace). DRAINING cannot meet it
    # (conn_fail counts a FIN read as first); it would be done, as before.
    [CH_CUT, CH_DONE, CH_CUT, CH_DONE],
    # CE_SOURCE_ERROR: the failed side's error ends what it sent, with no FIN.
    [CH_DONE, CH_DONE, CH_DONE, CH_DONE],
    # CE_RETRY: a FIN passed to the dead target is owed to the next one; a cut
    # is undone, the next target never failed.
    [CH_OPEN, CH_DRAINING, CH_OPEN, CH_DRAINING],
]


cdef inline bint chan_source_ended(fp_chan* ch) noexcept nogil:
    """The source's end was read (or its error ended it): read no more from it."""
    return ch.state == CH_DRAINING or ch.state == CH_DONE


cdef inline bint chan_finished(fp_chan* ch) noexcept nogil:
    """No FIN is (any longer) to be passed on this way: sent, or never to be."""
    return ch.state == CH_CUT or ch.state == CH_DONE


cdef inline void chan_on(fp_chan* ch, fp_chan* other, int dst_fd, int event) noexcept nogil:
    """Move the direction `ch` (toward dst_fd; `other` is the way back) on `event`."""
    cdef uint8_t entry = CHAN_TABLE[event][ch.state]
    if entry & DO_FIN:
        # When the way back is done too, the close that follows sends the FIN.
        if not chan_finished(other):
            shutdown(dst_fd, SHUT_WR)
    ch.state = entry & CH_STATE_MASK


# Whether the next byte the reader takes may be a TCP urgent mark. splice() stops at
# one (and says 0 there once a FIN has come), recv() stops short before it: an
# apparent end of stream is believed only where no mark may be ahead.
cdef enum UrgentMark:
    MARK_NONE = 0       # none signalled, and the events would have told
    MARK_UNSEEN = 1     # EPOLLPRI masked (muted) since the last event: one may have come
    MARK_AHEAD = 2      # urgent data signalled (EPOLLPRI, or SIOCATMARK said so)

# Its moves (side_event, side_mute, at_urgent_mark, fill_past_urgent_mark, chan_pump):
#   EPOLLPRI, or SIOCATMARK true       -> MARK_AHEAD
#   any event while not muted          -> MARK_UNSEEN becomes MARK_NONE (events tell again)
#   muted                              -> MARK_NONE becomes MARK_UNSEEN
#   EAGAIN reading past it (recv)      -> MARK_NONE
#   a connect retried                  -> MARK_NONE (a new socket)
