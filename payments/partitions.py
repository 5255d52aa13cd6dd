"""Monthly partitions of the payments' high-volume tables on PostgreSQL (see playpay.partitions).

The status history, the ledger entries and lines, the refunds and the reversals are partitioned by the month
of their payment's creation (`payment_created_at`), not by their own time: all the rows of a payment sit in
its month's partitions, found by the payment's own month, and a month of payments leaves (archive, retention)
with all of its history, ledger, refunds and reversals.

Their default partitions keep what they hold: rows of payments older than the partitions (those migrated from
before them, more than 24 months old) stay there until they are removed with it. A month is never carved out
of them: ledger entries cannot move between partitions while lines refer to them, and the history and lines
stay in the same months as the entries. New payments are always of a month that has its partitions (made
three months ahead).

The payments themselves are partitioned by their `created_at`, and every table above refers to its payment
by (payment_id, payment_created_at). Unique keys there must hold the month: the idempotency key per app and the
carrier reference per carrier are kept unique across months by two unpartitioned key tables
(`PaymentIdempotencyKey`, `PaymentCarrierReference`), whose rows of a month are deleted when the month's
payments leave; a webhook delivery of such a payment keeps its row, its payment unset (as SET_NULL would).

A month leaves (archive, retention) in the order of the foreign keys between them: ledger lines, then ledger
entries (which refer to refunds), then refunds; history and reversals in any order (nothing refers to them);
the payments last. PostgreSQL refuses to detach a month others still refer to (`archive_partitions` says which
order to follow).
"""

from payments.models import UNDECIDED_STATUSES, MoneyOperation
from playpay.partitions import IdMonths, PartitionedTable, register

# A month of payments leaves only once nothing of it moves any more: no payment short of a final status or
# with an outcome the carrier has not stated, no refund or reversal pending. A refund confirmed later would
# need the charge's ledger lines, gone with the month. Every table of the month waits for the same.
UNSETTLED = f"""
SELECT (SELECT count(*) FROM payments_payment
        WHERE created_at >= %(start)s AND created_at < %(end)s
          AND (status IN ({", ".join(f"'{s}'" for s in UNDECIDED_STATUSES)}) OR outcome_unknown_since IS NOT NULL))
     + (SELECT count(*) FROM payments_refund
        WHERE payment_created_at >= %(start)s AND payment_created_at < %(end)s
          AND (status = '{MoneyOperation.Status.PENDING}' OR outcome_unknown_since IS NOT NULL))
     + (SELECT count(*) FROM payments_reversal
        WHERE payment_created_at >= %(start)s AND payment_created_at < %(end)s
          AND (status = '{MoneyOperation.Status.PENDING}' OR outcome_unknown_since IS NOT NULL))
"""  # noqa: S608  (statuses from the models' choices, no input)

HISTORY = register(
    PartitionedTable(table="payments_paymentstatuschange", column="payment_created_at", moves_from_default=False)
)

# Ledger entries and their lines, by their payment's month: an entry and its lines in the same month.
ENTRIES = register(
    PartitionedTable(
        table="payments_ledgerentry",
        column="payment_created_at",
        moves_from_default=False,
        unsettled=UNSETTLED,
        partition_sql=(
            "CREATE TRIGGER ledgerentry_no_truncate BEFORE TRUNCATE ON {partition} "
            "FOR EACH STATEMENT EXECUTE FUNCTION playpay_ledger_append_only()",
        ),
    )
)
LINES = register(
    PartitionedTable(
        table="payments_ledgerline",
        column="payment_created_at",
        moves_from_default=False,
        unsettled=UNSETTLED,
        partition_sql=(
            "CREATE TRIGGER ledgerline_no_truncate BEFORE TRUNCATE ON {partition} "
            "FOR EACH STATEMENT EXECUTE FUNCTION playpay_ledger_append_only()",
        ),
    )
)

# Refunds and reversals, by their payment's month: ledger entries refer to a refund by (refund_id,
# payment_created_at).
REFUNDS = register(
    PartitionedTable(
        table="payments_refund", column="payment_created_at", moves_from_default=False, unsettled=UNSETTLED
    )
)
REVERSALS = register(
    PartitionedTable(
        table="payments_reversal", column="payment_created_at", moves_from_default=False, unsettled=UNSETTLED
    )
)

# Last to leave: every table above refers to it. Its key tables' rows of the month go with it (a key of an
# archived month may be used again); its webhook deliveries stay, unlinked.
PAYMENTS = register(
    PartitionedTable(
        table="payments_payment",
        column="created_at",
        moves_from_default=False,
        unsettled=UNSETTLED,
        released=(
            "DELETE FROM payments_paymentidempotencykey WHERE payment_id IN (SELECT id FROM {partition})",
            "DELETE FROM payments_paymentcarrierreference WHERE payment_id IN (SELECT id FROM {partition})",
            "UPDATE payments_webhookdelivery SET payment_id = NULL, payment_created_at = NULL "
            "WHERE payment_id IN (SELECT id FROM {partition})",
        ),
    )
)

# Reads of a row by its id alone name the months that can hold it (playpay.partitions.IdMonths).
PAYMENT_MONTHS = IdMonths(PAYMENTS)
REFUND_MONTHS = IdMonths(REFUNDS)
REVERSAL_MONTHS = IdMonths(REVERSALS)
