package deps

import (
	_ "github.com/cenkalti/backoff/v4"
	_ "github.com/docker/docker/client"
	_ "github.com/go-resty/resty/v2"
	_ "github.com/rs/zerolog"
	_ "github.com/spf13/cobra"
	_ "github.com/stretchr/testify/require"
	_ "github.com/vishvananda/netlink"
	_ "github.com/vishvananda/netns"
)
