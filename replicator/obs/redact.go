package obs

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
)

// Redacted stands in for a secret in any text the replicator shows.
const Redacted = "[redacted]"

// Redactor removes known secrets (the database password, link tokens,
// search credentials) from text before it reaches a log line, an HTTP body
// or an error message. Errors from drivers and libraries can quote what
// they were given; the redactor is the last line that keeps a secret from
// showing, whatever the path. A nil *Redactor leaves text as it is.
type Redactor struct {
	// secrets, longest first, so a secret containing another goes whole;
	// replaced whole by Add.
	secrets atomic.Pointer[[]string]
}

// NewRedactor returns a redactor for secrets; empty ones are ignored. Each
// secret is also matched in its URL-encoded forms, as a connection string
// carries it.
func NewRedactor(secrets ...string) *Redactor {
	r := &Redactor{}
	r.secrets.Store(forms(nil, secrets))
	return r
}

// Add adds secrets (a reloaded configuration's new tokens, say). Safe for
// concurrent use: the command and the replicator share one redactor.
func (r *Redactor) Add(secrets ...string) {
	for {
		old := r.secrets.Load()
		if r.secrets.CompareAndSwap(old, forms(*old, secrets)) {
			return
		}
	}
}

// forms returns known with secrets and their encoded forms added, longest
// first.
func forms(known []string, secrets []string) *[]string {
	seen := map[string]bool{}
	list := append([]string(nil), known...)
	for _, s := range list {
		seen[s] = true
	}
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			list = append(list, s)
		}
	}
	for _, s := range secrets {
		add(s)
		add(url.QueryEscape(s))
		add(url.PathEscape(s))
		add(url.UserPassword("", s).String()[1:]) // userinfo form, after ":"
	}
	slices.SortFunc(list, func(a, b string) int { return len(b) - len(a) })
	return &list
}

// String returns s with every secret replaced by Redacted.
func (r *Redactor) String(s string) string {
	if r == nil {
		return s
	}
	for _, sec := range *r.secrets.Load() {
		if strings.Contains(s, sec) {
			s = strings.ReplaceAll(s, sec, Redacted)
		}
	}
	return s
}

// Error returns err with a redacted message (nil for nil); errors.Is and
// errors.As still see the original chain.
func (r *Redactor) Error(err error) error {
	if err == nil || r == nil {
		return err
	}
	msg := err.Error()
	if red := r.String(msg); red != msg {
		return &redactedError{msg: red, err: err}
	}
	return err
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// RedactLogger returns a logger that redacts secrets, and the redactor it
// filters through: log's own, with secrets added, when log redacts already
// (the command wraps its logger, slog's default too, before Run), so that
// a secret added later (a reload's new token) reaches every line, whichever
// logger writes it; otherwise a new one wrapping log.
func RedactLogger(log *slog.Logger, secrets ...string) (*Redactor, *slog.Logger) {
	if rh, ok := log.Handler().(*redactHandler); ok {
		rh.r.Add(secrets...)
		return rh.r, log
	}
	r := NewRedactor(secrets...)
	return r, slog.New(r.Handler(log.Handler()))
}

// Handler wraps h so that no record it writes carries a secret: the message
// and every attribute (strings, errors, anything formatted) are redacted.
func (r *Redactor) Handler(h slog.Handler) slog.Handler {
	if r == nil {
		return h
	}
	// Only r itself is not wrapped twice: another redactor with the same
	// secrets today may be given others later (Add), which h would miss.
	if rh, ok := h.(*redactHandler); ok && rh.r == r {
		return h
	}
	return &redactHandler{inner: h, r: r}
}

type redactHandler struct {
	inner slog.Handler
	r     *Redactor
}

func (h *redactHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *redactHandler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, h.r.String(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.r.attr(a))
		return true
	})
	return h.inner.Handle(ctx, out)
}

func (h *redactHandler) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = h.r.attr(a)
	}
	return &redactHandler{inner: h.inner.WithAttrs(red), r: h.r}
}

func (h *redactHandler) WithGroup(name string) slog.Handler {
	return &redactHandler{inner: h.inner.WithGroup(name), r: h.r}
}

// attr redacts one attribute, formatting values that are not plain scalars
// (errors, Stringers, structs) into redacted text.
func (r *Redactor) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, r.String(v.String()))
	case slog.KindGroup:
		g := v.Group()
		red := make([]any, len(g))
		for i, ga := range g {
			red[i] = r.attr(ga)
		}
		return slog.Group(a.Key, red...)
	case slog.KindAny:
		var s string
		switch x := v.Any().(type) {
		case []byte:
			s = string(x) // as the text handler prints it
		case error:
			s = x.Error()
		case fmt.Stringer:
			s = x.String()
		default:
			s = fmt.Sprint(x)
		}
		if red := r.String(s); red != s {
			return slog.String(a.Key, red)
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
