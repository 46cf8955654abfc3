package audit

import (
	"bytes"
	"net/http"
	"time"
)

// Handler serves conflict reports read from source:
//
//	GET <mount path>?since=&until=&table=&region=&pair=&limit=&format=
//
// The parameters are those of ParseQuery (format defaults to json). The
// response carries the format's content type (ContentType); bad parameters
// get 400 with a message naming them, a method other than GET or HEAD 405,
// and a failure to read the logs 500. The caller chooses the path (the
// replicator mounts it at /conflicts/report) and whatever authentication it
// wants in front: reports contain row images.
func Handler(source Source) http.Handler {
	return &handler{src: source, now: time.Now}
}

type handler struct {
	src Source
	now func() time.Time
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "conflict report: method "+r.Method+" not allowed (use GET)", http.StatusMethodNotAllowed)
		return
	}
	now := h.now()
	f, format, err := ParseQuery(r.URL.Query(), now)
	if err != nil {
		http.Error(w, "conflict report: bad parameters: "+err.Error(), http.StatusBadRequest)
		return
	}
	rep, err := Read(r.Context(), h.src, f, now)
	if err != nil {
		http.Error(w, "conflict report: "+err.Error(), http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := Render(&buf, rep, format); err != nil {
		http.Error(w, "conflict report: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", ContentType(format))
	if format == FormatHTML {
		// The page is self-contained: nothing to fetch, nothing to run.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(buf.Bytes())
}
