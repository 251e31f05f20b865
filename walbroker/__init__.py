"""walbroker: a durable, partitioned log broker on LMDB, served over gRPC.

Vocabulary (Kafka's, used exactly): a *topic* has a fixed number of
*partitions*; an *offset* numbers points (messages), and "offset" always means
"the next one" — the *log end offset* is the offset the next point will get, a
*committed offset* is where a group resumes, a member's *position* is the next
offset it will be given. *Lag* = log end offset - committed offset. A group's
*generation* increases on every membership change; *members* of a generation
own disjoint partitions.
"""
