"""What never reaches logs, the journal or an export in clear: phone numbers are masked."""


def mask_msisdn(msisdn: str) -> str:
    """`+447400123456` -> `+44740*****56`: enough to recognise, not enough to dial."""
    if len(msisdn) <= 6:
        return "*" * len(msisdn)
    return msisdn[:6] + "*" * (len(msisdn) - 8) + msisdn[-2:]
