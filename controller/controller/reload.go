package controller

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// The settings a config reload changes while the controller runs
// (cli.go's liveKeys). Zero means the default, as in Config.

// SetHeartbeatInterval changes the interval agents are told and tells the
// connected ones at once; it returns how many were told.
func (c *Controller) SetHeartbeatInterval(d time.Duration) int {
	if !c.fleet.SetHeartbeatInterval(d) {
		return 0
	}
	d = c.fleet.HeartbeatInterval()
	return c.fleet.Broadcast(&ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Settings{Settings: &ferryv1.AgentSettings{HeartbeatInterval: durationpb.New(d)}}})
}

// HeartbeatInterval is the interval agents are told now.
func (c *Controller) HeartbeatInterval() time.Duration { return c.fleet.HeartbeatInterval() }

// SetDownloadLimits changes --max-downloads, --max-downloads-per-node and
// --download-stall-timeout (artifact.Downloader.SetLimits).
func (c *Controller) SetDownloadLimits(maxDownloads, maxPerNode int, stall time.Duration) {
	c.downloads.SetLimits(maxDownloads, maxPerNode, stall)
}

// DownloadLimits returns the download limits in force.
func (c *Controller) DownloadLimits() (maxDownloads, maxPerNode int, stall time.Duration) {
	return c.downloads.Limits()
}
