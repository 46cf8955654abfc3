package replicator

import (
	"fmt"
	"strings"
)

// EncodingDifference says why a region whose database sessions exchange
// text in here cannot take rows from region peer, whose sessions exchange
// them in there ("" when it can, or when either is unknown: a release that
// predates sending it). A text value's bytes travel as they were read and
// are written as they arrive, so text read in one encoding and written as
// another would be stored as other characters, or refused by the server
// and stop the stream.
func EncodingDifference(here, there, peer string) string {
	if here == "" || there == "" || strings.EqualFold(here, there) {
		return ""
	}
	return fmt.Sprintf("text encoding: this region's database sessions exchange text in %s, region %s's in %s, so its text would be stored here as other characters; "+
		"set the same client_encoding in every region's database connection string (UTF8 suits every database encoding but SQL_ASCII, whose bytes are never converted) before the regions first replicate", here, peer, there)
}

// EncodingWarning says what a region whose database sessions exchange text
// in enc gives up ("" for UTF8): keys, parked changes and conflict
// records' row images are kept as JSON, which holds UTF-8 only.
func EncodingWarning(enc string) string {
	if enc == "UTF8" {
		return ""
	}
	return "the database sessions exchange text in " + enc + ", not UTF8: every region must use the same encoding, and keys, parked changes and conflict records' row images are kept as JSON, " +
		"where each byte outside ASCII becomes U+FFFD (two keys that differ only there are one row to the replicator; a parked change is applied so when retried); " +
		"client_encoding=UTF8 in the connection string, set in every region before they first replicate, avoids both"
}
