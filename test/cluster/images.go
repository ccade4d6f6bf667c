package cluster

import "nodeagent/test/cluster/oci"

// Agnhost assembles the e2e suite's agnhost image around the agnhost binary (built static by
// build.sh): /agnhost is the entrypoint, "pause" its default command, as upstream's image.
func Agnhost(binary string) (*oci.Image, error) {
	img, err := oci.Single(AgnhostImage, binary, "/agnhost")
	if err != nil {
		return nil, err
	}
	img.Cmd = []string{"pause"}
	return img, nil
}
