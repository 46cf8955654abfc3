package link

import (
	"errors"
	"fmt"
	"net/url"
)

// Every link request carries the pair's bearer token, so a peer configured
// with TLS must be reached over it. The URL's scheme alone decides whether
// a request is encrypted: a tls block next to an http:// URL used to be
// ignored, and the token crossed the network in cleartext. Such a pair is
// refused instead, when the configuration is read (CheckURL) and again
// before anything is dialled (ClientConfig.peerURL).

// CheckURL reports what is wrong with a peer's link URL given the TLS
// settings it is reached with: it must be https://, or http:// with no
// TLS settings at all (plaintext, for loopback tests and private networks
// only). An https:// URL with no TLS settings is taken: the peer's
// certificate is verified against the system's roots.
func CheckURL(raw string, f TLSFiles) error {
	u, err := parseURL(raw)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("url %s: want https:// (or http:// without TLS)", u.Redacted())
	case u.Scheme == "http" && f != (TLSFiles{}):
		return fmt.Errorf("url %s has no TLS but the peer has a tls block: use https://", u.Redacted())
	}
	return nil
}

// parseURL parses a peer's URL; its error does not repeat the URL, which
// may hold credentials.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("url: %w", err)
	}
	return u, nil
}

// peerURL parses cfg.URL, and refuses a TLS configuration with a URL
// that would not use it: the caller did not check its configuration with
// CheckURL, or changed it since.
func (cfg ClientConfig) peerURL() (*url.URL, error) {
	u, err := parseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("peer %s %w", cfg.Peer, err)
	}
	if cfg.TLS != nil && u.Scheme != "https" {
		return nil, fmt.Errorf("peer %s: url %s has no TLS but TLS is configured for the peer: use https://", cfg.Peer, u.Redacted())
	}
	return u, nil
}
