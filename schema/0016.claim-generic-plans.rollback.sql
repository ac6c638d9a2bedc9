-- Back to plans chosen per call.

ALTER FUNCTION pgqueue.claim(text[], integer, text, double precision, boolean, boolean, boolean, boolean)
    RESET plan_cache_mode;
