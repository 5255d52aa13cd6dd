"""English (the back office's only language): a moment is written as `playpay.times.utc_text` writes it,
"2026-12-04 21:59:17 UTC", wherever a page shows a date-time field as it is (list columns, read-only fields,
the history of an object and the admin's own log). `T` is the zone's name: UTC, the only zone (TIME_ZONE)."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
