"""Monthly partitions of the payments' high-volume tables on PostgreSQL (see playpay.partitions).

The status history is partitioned by the month of its payment's creation (`payment_created_at`), not of the
change itself: a payment's whole history sits in one partition, found by the payment's own month, and a
month of payments leaves (archive, retention) with all of its history.
"""

from playpay.partitions import PartitionedTable, register

HISTORY = register(PartitionedTable(table="payments_paymentstatuschange", column="payment_created_at"))
