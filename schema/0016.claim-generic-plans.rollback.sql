-- Back to plans chosen per call.

DROP FUNCTION pgqueue.claim_runnable(text[], integer, text, double precision, boolean, boolean, boolean);
