package nuvla2

import (
	"crypto/md5" //nolint:gosec // Nuvla's id scheme, not a security use
	"fmt"
)

// ParamID is the id Nuvla gives the deployment-parameter (parent, node-id, name): Java's
// UUID.nameUUIDFromBytes of "parent:node-id:name" (an MD5 name-based UUID, version 3, with no
// namespace bytes; a missing node-id is the empty string).
func ParamID(parent, nodeID, name string) string {
	sum := md5.Sum([]byte(parent + ":" + nodeID + ":" + name)) //nolint:gosec // see above
	sum[6] = sum[6]&0x0f | 0x30
	sum[8] = sum[8]&0x3f | 0x80
	return fmt.Sprintf("deployment-parameter/%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:])
}
