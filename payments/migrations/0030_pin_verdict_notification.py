"""On PostgreSQL a payment whose submitted PIN gets its verdict notifies the confirm request waiting for it.

A confirm request waits up to PIN_CONFIRM_WAIT_MS for the carrier queue's verdict on the PIN
(`payments.services.payments._await_pin_verdict`). It used to poll the payment every 50 ms; it now LISTENs on
the payment's channel, and this trigger sends the notification when the PIN check stops being pending
(`pin_sent` with a submitted PIN becomes anything else), whatever code made the change. PostgreSQL delivers
it at the commit. The trigger is on the partitioned table, so every partition has it, those made later too.
"""

from django.db import migrations

from playpay.postgresql.schema import on_postgresql

FORWARD = """
CREATE FUNCTION playpay_payment_pin_verdict() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('payment_pin_verdict_' || NEW.id::text, '');
    RETURN NULL;
END
$$;
CREATE TRIGGER payment_pin_verdict AFTER UPDATE ON payments_payment FOR EACH ROW
    WHEN (OLD.status = 'pin_sent' AND OLD.pin_submitted_at IS NOT NULL
          AND (NEW.status <> 'pin_sent' OR NEW.pin_submitted_at IS NULL))
    EXECUTE FUNCTION playpay_payment_pin_verdict();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS payment_pin_verdict ON payments_payment;
DROP FUNCTION IF EXISTS playpay_payment_pin_verdict();
"""


class Migration(migrations.Migration):
    dependencies = [("payments", "0029_count_payment_ledger_figures")]
    operations = [on_postgresql(FORWARD, BACKWARD)]
