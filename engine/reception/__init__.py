"""Reception: SMTP (aiosmtpd) and HTTP (/api/inject/v1) listeners feeding the spool."""
