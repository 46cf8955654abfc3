package obs

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
)

const planted = "Planted@Secret/42"

func TestRedactorRemovesSecretsInEveryForm(t *testing.T) {
	r := NewRedactor(planted, "", "tok_0123456789abcdef")
	for _, in := range []string{
		"connect to " + planted + "@host",
		"postgres://app:" + url.QueryEscape(planted) + "@host/db",
		"postgres://app:" + url.UserPassword("app", planted).String()[4:] + "@host/db",
		"Bearer tok_0123456789abcdef",
	} {
		out := r.String(in)
		if strings.Contains(out, "Planted") || strings.Contains(out, "tok_0123") {
			t.Errorf("String(%q) = %q: a secret is left", in, out)
		}
		if !strings.Contains(out, Redacted) {
			t.Errorf("String(%q) = %q: no %s marker", in, out, Redacted)
		}
	}
	if got := r.String("nothing secret here"); got != "nothing secret here" {
		t.Errorf("text without secrets changed: %q", got)
	}
	var nilR *Redactor
	if got := nilR.String("x " + planted); got != "x "+planted {
		t.Errorf("nil redactor changed text: %q", got)
	}
}

func TestRedactorErrorKeepsTheChain(t *testing.T) {
	r := NewRedactor(planted)
	base := errors.New("dial " + planted + ": refused")
	err := r.Error(fmt.Errorf("probe: %w", base))
	if strings.Contains(err.Error(), "Planted") {
		t.Fatalf("error text carries the secret: %q", err)
	}
	if !errors.Is(err, base) {
		t.Fatal("errors.Is lost the original error")
	}
	if r.Error(nil) != nil {
		t.Fatal("Error(nil) is not nil")
	}
}

type stringer struct{ s string }

func (s stringer) String() string { return s.s }

func TestRedactHandlerCleansMessagesAndAttributes(t *testing.T) {
	r := NewRedactor(planted)
	for name, mk := range map[string]func(*bytes.Buffer) slog.Handler{
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
	} {
		var buf bytes.Buffer
		log := slog.New(r.Handler(mk(&buf)))
		log = log.With("conn", "postgres://u:"+planted+"@h/db")
		log.WithGroup("g").Error("failed with "+planted,
			"err", errors.New("auth "+planted),
			"s", stringer{"str " + planted},
			"any", struct{ P string }{planted},
			"bytes", []byte("b "+planted),
			slog.Group("inner", "x", planted),
			"n", 42)
		out := buf.String()
		if strings.Contains(out, "Planted") || strings.Contains(out, url.QueryEscape(planted)) {
			t.Errorf("%s log carries the secret: %s", name, out)
		}
		if !strings.Contains(out, "42") || strings.Count(out, Redacted) < 7 {
			t.Errorf("%s log lost its other content or markers: %s", name, out)
		}
	}
}

func TestRedactHandlerWrapsOnce(t *testing.T) {
	r := NewRedactor(planted)
	h := r.Handler(slog.NewTextHandler(&bytes.Buffer{}, nil))
	if r.Handler(h) != h {
		t.Fatal("a handler already redacting through r was wrapped again")
	}
	// Equal secrets today are no promise: the other redactor may be given
	// more (RedactLogger is how to share one).
	if NewRedactor(planted).Handler(h) == h {
		t.Fatal("a handler redacting through another redactor was not wrapped")
	}
}

func TestRedactorTakesSecretsAddedLater(t *testing.T) {
	r := NewRedactor("first-token")
	var buf strings.Builder
	log := slog.New(r.Handler(slog.NewTextHandler(&buf, nil)))
	r.Add("second-token")
	log.Info("peers", "a", "first-token", "b", "url?t=second-token")
	if strings.Contains(buf.String(), "token") {
		t.Fatalf("a secret added after the logger was built shows: %s", buf.String())
	}
	if got := r.String("x second-token"); got != "x "+Redacted {
		t.Fatalf("String = %q", got)
	}
}

// The command wraps its logger, which is also slog's default, in a redactor
// of the config's secrets before Run, which redacts them again: Run's
// second redactor, its handler's secrets equal, handed back the command's
// handler, so the tokens a reload added to it reached no log line's filter.
// The command and Run now share one redactor.
func TestRedactLoggerSharesTheCallersRedactor(t *testing.T) {
	const first, reloaded = "first-token-0123456789", "reloaded-token-0123456789"
	var buf bytes.Buffer
	_, cmdLog := RedactLogger(slog.New(slog.NewTextHandler(&buf, nil)), first) // as the command does
	red, nodeLog := RedactLogger(cmdLog, first)                                // as Run does
	red.Add(reloaded)                                                          // as a reload that brings a new peer token does
	nodeLog.Info("peers applied", "url", "https://eu.example.net/?t="+reloaded)
	cmdLog.Warn("from the command or slog's default: " + reloaded)
	nodeLog.Error("auth", "err", errors.New("bad token "+first))
	if out := buf.String(); strings.Contains(out, "token-0123") || strings.Count(out, Redacted) != 3 {
		t.Fatalf("a secret shows in the log:\n%s", out)
	}

	// A logger that does not redact yet is wrapped, and takes later secrets.
	buf.Reset()
	red, log := RedactLogger(slog.New(slog.NewTextHandler(&buf, nil)), first)
	red.Add(reloaded)
	log.Info("peers", "a", first, "b", reloaded)
	if out := buf.String(); strings.Contains(out, "token-0123") {
		t.Fatalf("a secret shows in the log:\n%s", out)
	}
}
