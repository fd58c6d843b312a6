package backoff

// PermanentError marks an error no retry can fix (an expired certificate,
// a full disk): a retry loop that sees it stops and returns Err.
type PermanentError struct{ Err error }

// Permanent wraps err so retry loops stop on it.
func Permanent(err error) *PermanentError { return &PermanentError{err} }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }
